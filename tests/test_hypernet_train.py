"""Training, checkpoints and sampling on a small synthetic collection (seconds on a CPU)."""
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hypernet.cli import main
from hypernet.model.checkpoint import load_hypernet, save_hypernet
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora
from hypernet.pipeline.sampling import decode_lora, sample_latents
from hypernet.pipeline.train_state import state_path
from hypernet.pipeline.training import train
from hypernet_support import SMALL_LAYOUT, make_dataset, quick_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("hypernet_data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hypernet_ckpt") / "small.safetensors"
    train(data, out, quick_config(), progress=False)
    return out


def _tensors(path):
    return load_file(str(path))


def test_training_writes_a_checkpoint_that_loads_with_its_config(trained):
    model = load_hypernet(trained)
    assert model.layout == SMALL_LAYOUT
    assert model.embedding_model == "synthetic-uniform-sphere-512"
    with safe_open(str(trained), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "lora-hypernet" and meta["format_version"] == "1"
    assert json.loads(meta["config"])["layout"]["base_model"] == "sdxl"
    assert {k.split(".")[0] for k in keys} == {"vae", "prior", "norm"}
    assert not state_path(trained).exists()  # the resume file goes once training is done
    assert "autoencoder" in model.describe() and "adalora" in model.describe()


def test_training_is_deterministic_under_a_seed(data, trained, tmp_path):
    again = tmp_path / "again.safetensors"
    train(data, again, quick_config(), progress=False)
    first, second = _tensors(trained), _tensors(again)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = tmp_path / "other_seed.safetensors"
    train(data, other, quick_config(seed=1), progress=False)
    assert not torch.equal(first["prior.latent_in.weight"], _tensors(other)["prior.latent_in.weight"])


@pytest.mark.parametrize("stop_at", [("autoencoder", 7), ("prior", 8)])
def test_an_interrupted_run_resumes_to_the_same_result(data, trained, tmp_path, stop_at):
    out = tmp_path / "resumed.safetensors"

    def interrupt(phase, step):
        if (phase, step) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, out, quick_config(), progress=False, on_step=interrupt)
    assert not out.exists() and state_path(out).exists()
    with pytest.raises(HypernetError, match="--resume"):
        train(data, out, quick_config(), progress=False)
    train(data, out, quick_config(), progress=False, resume=True)
    resumed, straight = _tensors(out), _tensors(trained)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_the_resume_file_keeps_the_format_earlier_versions_wrote(data, tmp_path):
    """Resume files written before the training modules were split must still resume: the same
    metadata keys and tensor prefixes (pipeline/train_state.py)."""
    out = tmp_path / "format.safetensors"

    def interrupt(phase, step):
        if (phase, step) == ("prior", 6):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, out, quick_config(), progress=False, on_step=interrupt)
    with safe_open(str(state_path(out)), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert set(meta) == {"format", "format_version", "phase", "step", "data", "train_config", "hypernet_config",
                         "param_groups", "losses"}
    assert (meta["format"], meta["format_version"], meta["phase"], meta["step"]) == (
        "lora-hypernet-train-state", "1", "prior", "5")
    assert {k.split(".")[0] for k in keys} == {"model", "ema", "opt"}
    assert all(k.split(".")[1].isdigit() for k in keys if k.startswith("opt."))


def test_sampling_defaults_have_one_owner():
    """The library, the `sample` and `evaluate` commands (and the Sample LoRA node) share
    pipeline.sampling's defaults; guidance 3 is what benchmarks/RESULTS.md measured with."""
    import argparse
    import inspect

    from hypernet.cli import evaluate as evaluate_cli, sample as sample_cli
    from hypernet.pipeline import sampling
    from hypernet.pipeline.evaluate import evaluate
    expected = {"steps": sampling.DEFAULT_STEPS, "guidance": sampling.DEFAULT_GUIDANCE, "eta": sampling.DEFAULT_ETA}
    assert expected == {"steps": 25, "guidance": 3.0, "eta": 0.0}
    for function in (sample_latents, evaluate):
        parameters = inspect.signature(function).parameters
        assert {name: parameters[name].default for name in expected} == expected, function.__name__
    for command in (sample_cli, evaluate_cli):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        assert {name: parser.get_default(name) for name in expected} == expected, command.__name__


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(data, tmp_path):
    out = tmp_path / "nan.safetensors"
    # An absurd learning rate without clipping headroom: the autoencoder diverges within a few steps.
    cfg = quick_config(ae_lr=1e30, warmup_steps=0, ae_steps=40)
    with pytest.raises(HypernetError, match=r"autoencoder loss became (nan|inf) at autoencoder step \d+") as err:
        train(data, out, cfg, progress=False)
    assert not out.exists()
    if "no state had been saved" not in str(err.value):
        assert state_path(out).exists()
        with safe_open(str(state_path(out)), framework="pt") as f:
            assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())


def test_existing_output_is_never_overwritten_without_asking(data, trained):
    before = trained.read_bytes()
    with pytest.raises(HypernetError, match="--overwrite"):
        train(data, trained, quick_config(), progress=False)
    assert trained.read_bytes() == before


def test_resume_refuses_another_dataset(data, tmp_path):
    out = tmp_path / "x.safetensors"

    def interrupt(phase, step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, out, quick_config(), progress=False, on_step=interrupt)
    other = make_dataset(tmp_path / "other", identities=12, seed=3)
    with pytest.raises(HypernetError, match="another dataset"):
        train(other, out, quick_config(), progress=False, resume=True)


def test_too_few_identities_are_refused(tmp_path):
    data = make_dataset(tmp_path, identities=2, heldout=0.5)
    with pytest.raises(HypernetError, match="at least 2"):
        train(data, tmp_path / "x.safetensors", quick_config(), progress=False)


# --- checkpoints that cannot be trusted ------------------------------------------------------

def _rewrite(src, dst, tensors=None, **meta_changes):
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    save_file(tensors(state) if tensors else state, str(dst), metadata=meta)
    return dst


def test_truncated_checkpoint_is_refused(trained, tmp_path):
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(HypernetError, match="truncated or corrupt"):
        load_hypernet(broken)


def test_checkpoint_from_a_newer_format_asks_for_an_update(trained, tmp_path):
    with pytest.raises(HypernetError, match="update the node pack"):
        load_hypernet(_rewrite(trained, tmp_path / "new.safetensors", format_version="2"))


def test_checkpoint_whose_tensors_disagree_with_its_config_is_refused(trained, tmp_path):
    def shrink(state):
        state["prior.latent_in.weight"] = state["prior.latent_in.weight"][:, :3].contiguous()
        return state
    with pytest.raises(HypernetError, match="prior.latent_in.weight has shape"):
        load_hypernet(_rewrite(trained, tmp_path / "shape.safetensors", tensors=shrink))


def test_absurd_config_is_refused_before_any_memory_is_spent(trained, tmp_path):
    with safe_open(str(trained), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    config["autoencoder"]["hidden"] = 2**31  # would be terabytes if built for real
    with pytest.raises(HypernetError, match="cannot be built|has shape"):
        load_hypernet(_rewrite(trained, tmp_path / "huge.safetensors", config=json.dumps(config)))


def test_nan_weights_and_foreign_files_are_refused(trained, tmp_path):
    def poison(state):
        state["vae.dec_out.bias"][0] = float("nan")
        return state
    with pytest.raises(HypernetError, match="NaN"):
        load_hypernet(_rewrite(trained, tmp_path / "nan.safetensors", tensors=poison))
    lora = tmp_path / "a_lora.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(lora))
    with pytest.raises(HypernetError, match="not a LoRA hypernet checkpoint"):
        load_hypernet(lora)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(HypernetError, match="arbitrary code"):
        load_hypernet(pickle)
    header_bomb = tmp_path / "bomb.safetensors"
    header_bomb.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(HypernetError, match="not a readable safetensors"):
        load_hypernet(header_bomb)


def test_save_and_load_round_trip_gives_the_same_model(trained, tmp_path):
    model = load_hypernet(trained)
    copy = tmp_path / "copy.safetensors"
    save_hypernet(model, copy)
    again = load_hypernet(copy)
    z = torch.randn(2, model.latent_size)
    torch.testing.assert_close(model.decode_latents(z), again.decode_latents(z), rtol=0, atol=0)


# --- sampling ------------------------------------------------------------------------------------

def test_sampling_is_seeded_and_row_independent(trained):
    model = load_hypernet(trained)
    emb = torch.nn.functional.normalize(torch.randn(3, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    batch = sample_latents(model, emb, seed=7, steps=5, guidance=2.0, eta=0.5)
    torch.testing.assert_close(batch, sample_latents(model, emb, seed=7, steps=5, guidance=2.0, eta=0.5), rtol=0, atol=0)
    alone = sample_latents(model, emb[0], seed=7, steps=5, guidance=2.0, eta=0.5)
    torch.testing.assert_close(alone[0], batch[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch, sample_latents(model, emb, seed=8, steps=5, guidance=2.0, eta=0.5))


def test_guidance_zero_ignores_the_face_and_guidance_moves_the_sample(trained):
    model = load_hypernet(trained)
    a, b = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)), dim=1)
    uncond_a = sample_latents(model, a, seed=0, steps=4, guidance=0.0)
    torch.testing.assert_close(uncond_a, sample_latents(model, b, seed=0, steps=4, guidance=0.0), rtol=0, atol=0)
    assert not torch.allclose(sample_latents(model, a, seed=0, steps=4, guidance=3.0), uncond_a)


def test_sampling_reports_progress_and_rejects_foreign_embeddings(trained):
    model = load_hypernet(trained)
    done = []
    latent = sample_latents(model, torch.ones(512), seed=0, steps=6, callback=done.append)
    assert done == [1, 2, 3, 4, 5, 6]
    lora = decode_lora(model, latent)
    assert list(lora) == SMALL_LAYOUT.names
    assert all(torch.isfinite(m.up).all() and torch.isfinite(m.down).all() for m in lora.values())
    with pytest.raises(HypernetError, match="512 values"):
        sample_latents(model, torch.ones(128), seed=0, steps=2)


def test_cli_trains_samples_and_refuses_to_overwrite(data, tmp_path, capsys):
    ckpt = tmp_path / "cli.safetensors"
    config = tmp_path / "quick.json"
    config.write_text(json.dumps({"preset": "tiny", "ae_steps": 6, "prior_steps": 6}))
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--config", str(config), "--quiet"]) == 0
    embedding = next((data.parent / "collection").glob("id-*/embedding.safetensors"))
    lora = tmp_path / "sampled.safetensors"
    args = ["sample", "--ckpt", str(ckpt), "--embedding", str(embedding), "--seed", "3", "--steps", "5", "--out", str(lora)]
    assert main(args) == 0
    weights = read_lora(lora)
    assert sorted(weights) == sorted(SMALL_LAYOUT.names)
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert meta["seed"] == "3" and meta["ss_network_dim"] == "4" and len(meta["hypernet_sha256"]) == 64
    before = lora.read_bytes()
    assert main(args) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert lora.read_bytes() == before


# --- evaluation ----------------------------------------------------------------------------------

def test_delta_metrics_match_dense_delta_w_and_rank_retrieval():
    from hypernet.pipeline.metrics import compare, delta_gram
    from hypernet.lora.vectorize import module_views
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, SMALL_LAYOUT.num_values, generator=gen), torch.randn(3, SMALL_LAYOUT.num_values, generator=gen)
    dense = lambda v: torch.cat([(u @ d).flatten(1) for u, d in module_views(v, SMALL_LAYOUT).values()], 1)  # noqa: E731
    torch.testing.assert_close(delta_gram(a, b, SMALL_LAYOUT), (dense(a) @ dense(b).T).double(), rtol=1e-4, atol=1e-3)
    perfect = compare(a, a, SMALL_LAYOUT)
    assert perfect["top1"] == 1.0 and abs(perfect["cosine"] - 1) < 1e-6 and perfect["rel_err"] < 1e-3
    swapped = compare(a[[1, 0, 3, 2]], a, SMALL_LAYOUT)
    assert swapped["top1"] == 0.0


def test_evaluate_cli_prints_one_json_object_with_the_promised_keys(data, trained, capsys):
    assert main(["evaluate", "--ckpt", str(trained), "--data", str(data), "--json", "--seeds", "2", "--steps", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    for path in ("recon.rel_err", "sampled.top1", "sampled.cosine", "sampled.diversity", "baselines.mean.top1",
                 "baselines.nearest_embedding.top1", "ceiling.top1"):
        value = result
        for key in path.split("."):
            value = value[key]
        assert isinstance(value, float) and value == value, path
    assert 0 <= result["sampled"]["top1"] <= 1 and result["count"]["heldout"] == 6
    assert result["ceiling"]["top1"] >= result["baselines"]["mean"]["top1"]


def test_evaluate_refuses_a_dataset_of_another_layout(trained, tmp_path):
    from hypernet.lora.layout import Layout
    from hypernet.lora.presets import preset
    other = make_dataset(tmp_path, identities=8, layout=Layout(preset("tiny-attn-r4").modules[6:10], "sdxl"))
    assert main(["evaluate", "--ckpt", str(trained), "--data", str(other)]) == 1
    from hypernet.pipeline.evaluate import evaluate
    from hypernet.data.dataset import open_dataset
    with pytest.raises(HypernetError, match="layout"):
        evaluate(load_hypernet(trained), open_dataset(other), progress=False)
