"""The noise floor (issue 19): what the noiseless LoRAs score against the noisy held-out LoRAs,
checked where it is known analytically, and reported by `evaluate --json --truth`."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypernet_support import SMALL_LAYOUT, quick_config

from hypernet.cli import main
from hypernet.data.builder import build_dataset
from hypernet.data.dataset import open_dataset
from hypernet.data.synth import SynthSpec, write_synth
from hypernet.errors import HypernetError
from hypernet.lora.vectorize import module_views
from hypernet.pipeline.noise_floor import noise_floor, read_truth
from hypernet.pipeline.training import train


def _collection(folder, spec: SynthSpec, identities: int = 12, truth: bool = True):
    write_synth(folder / "collection", SMALL_LAYOUT, identities, spec, progress=False, truth=truth)
    build_dataset(folder / "collection", folder / "data", heldout=0.5, progress=False)
    return folder / "collection", open_dataset(folder / "data")


def test_without_noise_the_floor_is_perfect(tmp_path):
    source, dataset = _collection(tmp_path, SynthSpec(noise=0.0, dependence="fourier", alpha="per-module"))
    floor = noise_floor(dataset, source)
    assert floor["top1"] == 1.0 and floor["rel_err"] < 1e-5 and floor["cosine"] > 1 - 1e-6


@pytest.mark.parametrize("noise", [0.1, 0.5])
def test_floor_relative_error_matches_the_noise_analytically(tmp_path, noise):
    """Noise of std e on every factor entry: E||(U + dU)(D + dD) - UD||^2 =
    e^2 (out ||D||^2 + in ||U||^2) + e^4 out rank in, per module, for the truth's U, D."""
    scale = 0.01
    source, dataset = _collection(tmp_path, SynthSpec(noise=noise, factor_scale=scale))
    noisy, _, ids = dataset.load("heldout")
    truth = read_truth(source, ids, dataset)
    e2 = (noise * scale) ** 2
    expected = []
    for t, n in zip(truth, noisy):
        diff_sq = noisy_sq = 0.0
        truth_views, noisy_views = module_views(t, SMALL_LAYOUT), module_views(n, SMALL_LAYOUT)
        for m in SMALL_LAYOUT:
            up, down = (x.double() for x in truth_views[m.name])
            diff_sq += e2 * (m.out_features * down.square().sum() + m.in_features * up.square().sum()) \
                + e2 ** 2 * m.out_features * m.rank * m.in_features
            nu, nd = (x.double() for x in noisy_views[m.name])
            noisy_sq += float((nu @ nd).square().sum())
        expected.append(math.sqrt(diff_sq) / math.sqrt(noisy_sq))
    floor = noise_floor(dataset, source)
    assert floor["rel_err"] == pytest.approx(sum(expected) / len(expected), rel=0.05)
    assert floor["rel_err"] > noise  # both factors carry noise: delta W's relative noise is larger


def test_missing_truth_is_a_clear_error(tmp_path):
    source, dataset = _collection(tmp_path, SynthSpec(), identities=4, truth=False)
    with pytest.raises(HypernetError, match="has no truth.safetensors; write the collection with"):
        noise_floor(dataset, source)
    with pytest.raises(HypernetError, match="is not a folder"):
        noise_floor(dataset, tmp_path / "nowhere")


def test_evaluate_json_reports_the_noise_floor(tmp_path, capsys):
    source, dataset = _collection(tmp_path, SynthSpec(noise=0.3), identities=16)
    ckpt = tmp_path / "h.safetensors"
    train(dataset.path, ckpt, quick_config(), progress=False)
    common = ["evaluate", "--ckpt", str(ckpt), "--data", str(dataset.path), "--json", "--seeds", "1", "--steps", "3"]
    assert main(common + ["--truth", str(source)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["noise_floor"] == noise_floor(dataset, source)
    assert set(result["noise_floor"]) == {"top1", "cosine", "rel_err"} and 0 < result["noise_floor"]["rel_err"] < 1
    assert main(common) == 0
    assert json.loads(capsys.readouterr().out)["noise_floor"] is None
    other, _ = _collection(tmp_path / "other", SynthSpec(), identities=16, truth=False)
    assert main(common + ["--truth", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "truth.safetensors" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(dataset.path), "--seeds", "1", "--steps", "3",
                 "--truth", str(source)]) == 0
    assert "noise floor" in capsys.readouterr().out
