"""identity_scale: decoded LoRAs moved away from the training mean, and the command that sets it."""
import json

import pytest
import torch
from hypernet_train_support import _tensors, data, trained  # noqa: F401  (fixtures)
from safetensors import safe_open

from hypernet.cli import main as cli
from hypernet.errors import HypernetError
from hypernet.model.checkpoint import load_hypernet, read_header
from hypernet.model.hypernet import HypernetConfig
from hypernet.pipeline.sampling import sample_latents


def _faces(n=3):
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(5)), dim=1)


def test_the_scaled_copy_moves_every_decoded_lora_that_many_times_as_far_from_the_mean(trained, tmp_path):
    out = tmp_path / "x2.5.safetensors"
    assert cli(["identity-scale", "--ckpt", str(trained), "--scale", "2.5", "--out", str(out)]) == 0
    plain, scaled = load_hypernet(trained), load_hypernet(out)
    assert plain.config.identity_scale == 1.0 and scaled.config.identity_scale == 2.5
    assert "identity scale: 2.5" in scaled.describe() and "identity scale" not in plain.describe()
    latents = sample_latents(plain, _faces(), seed=3)
    assert torch.equal(latents, sample_latents(scaled, _faces(), seed=3))  # sampling itself is unchanged
    mean = plain.norm.mean
    a, b = plain.decode_samples(latents), scaled.decode_samples(latents)
    assert torch.allclose(b - mean, 2.5 * (a - mean), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(a, b)
    # the weights and the training record travel unchanged
    assert all(torch.equal(_tensors(trained)[k], _tensors(out)[k]) for k in _tensors(trained))
    before, _ = read_header(trained)
    after, _ = read_header(out)
    assert {k: v for k, v in before.items() if k != "config"} == {k: v for k, v in after.items() if k != "config"}
    assert json.loads(after["config"])["identity_scale"] == 2.5 and "identity_scale" not in json.loads(before["config"])


def test_the_command_refuses_bad_scales_and_existing_files_and_writes_nothing(trained, tmp_path, capsys):
    out = tmp_path / "scaled.safetensors"
    for scale in ("0", "-1", "11", "nan"):
        assert cli(["identity-scale", "--ckpt", str(trained), "--scale", scale, "--out", str(out)]) == 1
        assert "identity_scale must be a number above 0 and at most 10" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"keep me")
    assert cli(["identity-scale", "--ckpt", str(trained), "--scale", "2", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert cli(["identity-scale", "--ckpt", str(trained), "--scale", "2", "--out", str(out), "--overwrite"]) == 0
    assert load_hypernet(out).config.identity_scale == 2.0


@pytest.mark.parametrize("value", [0, -0.5, 10.5, True, "2", None])
def test_a_config_with_an_impossible_scale_is_refused(trained, value):
    with safe_open(str(trained), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    config["identity_scale"] = value
    with pytest.raises(HypernetError, match="identity_scale"):
        HypernetConfig.from_dict(config)
