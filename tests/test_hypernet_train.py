"""Training, checkpoints and sampling on a small synthetic collection (seconds on a CPU)."""
import json

import pytest
import torch
from hypernet_support import SMALL_LAYOUT, make_dataset, quick_config
from hypernet_train_support import _tensors, data, trained  # noqa: F401  (fixtures)
from safetensors import safe_open

from hypernet.errors import HypernetError
from hypernet.model.checkpoint import load_hypernet
from hypernet.pipeline.sampling import sample_latents
from hypernet.pipeline.train_state import state_path
from hypernet.pipeline.training import train


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
    pipeline.sampling's defaults; guidance has none there (None: the checkpoint's own, 3 where
    training chose none, which is what benchmarks/RESULTS.md measured with)."""
    import argparse
    import inspect

    from hypernet.cli import evaluate as evaluate_cli
    from hypernet.cli import sample as sample_cli
    from hypernet.pipeline import sampling
    from hypernet.pipeline.evaluate import evaluate
    expected = {"steps": sampling.DEFAULT_STEPS, "guidance": None, "eta": sampling.DEFAULT_ETA}
    assert expected == {"steps": 25, "guidance": None, "eta": 0.0} and sampling.DEFAULT_GUIDANCE == 3.0
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

