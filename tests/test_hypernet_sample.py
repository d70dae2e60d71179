"""Checkpoints, sampling and evaluation of a hypernet trained on a small synthetic collection."""
import json
import struct

import pytest
import torch
from hypernet_support import SMALL_LAYOUT, make_dataset
from hypernet_train_support import data, trained  # noqa: F401  (fixtures)
from safetensors import safe_open
from safetensors.torch import save_file

from hypernet.cli import main
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora
from hypernet.model.checkpoint import load_hypernet, save_hypernet
from hypernet.pipeline.sampling import decode_lora, sample_latents

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
    from hypernet.lora.vectorize import module_views
    from hypernet.pipeline.metrics import compare, delta_gram
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
                 "baselines.nearest_embedding.top1", "baselines.ridge.top1", "baselines.ridge.rel_err",
                 "ceiling.top1"):
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
    from hypernet.data.dataset import open_dataset
    from hypernet.pipeline.evaluate import evaluate
    with pytest.raises(HypernetError, match="layout"):
        evaluate(load_hypernet(trained), open_dataset(other), progress=False)
