"""The synthetic generator family (issue 19): each knob measured in what the generator writes,
today's `synth` unchanged, determinism under a seed."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hypernet.cli import main
from hypernet.data.builder import build_dataset
from hypernet.data.dataset import open_dataset
from hypernet.data.synth import SynthSpec, _factor_scale, manifold_features, synth_embeddings, synth_vectors, write_synth
from hypernet.data.synth_family import family_layout
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora
from hypernet.lora.presets import preset
from hypernet.lora.vectorize import unflatten

DATA = Path(__file__).parent / "data"
spec = importlib.util.spec_from_file_location("make_synth_golden", DATA / "make_synth_golden.py")
golden_maker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden_maker)

SMALL = golden_maker.small_layout()  # 6 modules of the tiny UNet, rank 4


def _vectors(spec: SynthSpec, count: int, layout=SMALL, embeddings=None):
    """(noisy, noiseless) [count, D] as write_synth makes them."""
    embeddings = synth_embeddings(count, spec.seed) if embeddings is None else embeddings
    truth = torch.empty(len(embeddings), layout.num_values)
    gens = [torch.Generator().manual_seed(i) for i in range(len(embeddings))]
    noisy = synth_vectors(manifold_features(embeddings, spec), layout, spec, gens, truth)
    return noisy, truth


def _deltas(vector: torch.Tensor, layout) -> torch.Tensor:
    return torch.cat([m.delta().reshape(-1).double() for m in unflatten(vector, layout).values()])


def test_todays_synth_is_unchanged(tmp_path):
    """Files written by main before the family existed: same metadata and synth.json exactly,
    same tensors within float tolerance (the golden file may come from another CPU kind)."""
    with safe_open(str(golden_maker.GOLDEN), "pt") as f:
        golden_meta = f.metadata()
        golden = {k: f.get_tensor(k) for k in f.keys()}
    for label, synth_spec in golden_maker.SPECS.items():
        write_synth(tmp_path / label, SMALL, golden_maker.IDENTITIES, synth_spec, progress=False)
        tensors, metadata = golden_maker.collection_contents(tmp_path / label)
        assert {k: v for k, v in golden_meta.items() if k.startswith(label + "/")} == \
            {f"{label}/{k}": v for k, v in metadata.items()}
        assert {k for k in golden if k.startswith(label + "/")} == {f"{label}/{k}" for k in tensors}
        for key, value in tensors.items():
            assert torch.allclose(value, golden[f"{label}/{key}"], rtol=1e-5, atol=1e-8), key
        assert not (tmp_path / label / "id-00000" / "truth.safetensors").exists()


@pytest.mark.parametrize("noise", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("factor_scale", [None, 1e-3, 1e-1])
def test_noise_is_the_given_fraction_of_the_factor_scale(noise, factor_scale):
    noisy, truth = _vectors(SynthSpec(noise=noise, factor_scale=factor_scale, dependence="fourier"), 8)
    sigma = _factor_scale(4) if factor_scale is None else factor_scale
    measured = float((noisy - truth).std()) / sigma
    assert abs(measured - noise) < 0.03 * noise


@pytest.mark.parametrize("dependence", ["sincos", "linear", "linear-delta", "fourier"])
@pytest.mark.parametrize("factor_scale", [1e-3, 1e-2, 1e-1])
def test_noiseless_factor_entries_have_the_given_scale(dependence, factor_scale):
    _, truth = _vectors(SynthSpec(noise=0.0, factor_scale=factor_scale, dependence=dependence), 64)
    std = float(truth.std()) / factor_scale
    # base N(0,1) plus features of mean square 0.5 through a unit map: sqrt(1.5) (the fixed down
    # factors of linear-delta have only the base, hence a smaller spread there)
    low = 0.95 if dependence == "linear-delta" else 1.1
    assert low < std < 1.35


def test_default_scale_keeps_delta_w_entries_about_1e_3_at_every_rank():
    for rank in (1, 2, 8):
        layout = family_layout(SMALL, rank=rank)
        _, truth = _vectors(SynthSpec(noise=0.0), 4, layout)
        assert 3e-4 < float(_deltas(truth[0], layout).std()) < 3e-3


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_rank_knob_gives_files_of_that_rank(tmp_path, rank):
    assert main(["synth", "--layout", "tiny-attn-r4", "--modules", "3", "--rank", str(rank), "--identities", "2",
                 "--out", str(tmp_path), "--truth"]) == 0
    for name in ("lora.safetensors", "truth.safetensors"):
        lora = read_lora(tmp_path / "id-00001" / name)
        for module in lora.values():
            assert module.rank == rank
            assert int(torch.linalg.matrix_rank(module.delta().double(), rtol=1e-4)) == rank


def test_module_count_spreads_modules_over_the_layout(tmp_path):
    tiny = preset("tiny-attn-r4")
    assert main(["synth", "--layout", "tiny-attn-r4", "--modules", "5", "--identities", "3", "--out",
                 str(tmp_path)]) == 0
    names = sorted(read_lora(tmp_path / "id-00002" / "lora.safetensors").keys())
    assert len(names) == 5 and tiny.names[0] in names and tiny.names[-1] in names
    layout = json.loads((tmp_path / "synth.json").read_text())["layout"]
    assert len(layout["modules"]) == 5
    with pytest.raises(HypernetError, match="--modules"):
        family_layout(tiny, modules=0)
    with pytest.raises(HypernetError, match="--modules"):
        family_layout(tiny, modules=len(tiny) + 1)


@pytest.mark.parametrize("count", [1, 7])
def test_identity_count(tmp_path, count):
    folders = write_synth(tmp_path, SMALL, count, SynthSpec(dependence="linear"), progress=False)
    assert len(folders) == count == len([p for p in tmp_path.iterdir() if p.is_dir()])
    assert json.loads((tmp_path / "synth.json").read_text())["identities"] == count


def test_linear_member_is_exactly_linear_in_the_embedding():
    """f(a + b) - f(a) - f(b) + f(0) = 0 for the factors (linear) or delta W (linear-delta);
    clearly not for the nonlinear members."""
    a, b = synth_embeddings(2, 3)
    points = torch.stack([a, b, a + b, torch.zeros_like(a)])

    def defect(dependence: str, on_delta: bool) -> float:
        _, truth = _vectors(SynthSpec(noise=0.0, dependence=dependence), 4, embeddings=points)
        rows = torch.stack([_deltas(t, SMALL) for t in truth]) if on_delta else truth.double()
        return float((rows[2] - rows[0] - rows[1] + rows[3]).norm() / rows[2].norm())

    assert defect("linear", on_delta=False) < 1e-5
    assert defect("linear-delta", on_delta=True) < 1e-5
    assert defect("linear", on_delta=True) > 1e-2  # delta W = up @ down is quadratic in the embedding
    for nonlinear in ("sincos", "fourier"):
        assert defect(nonlinear, on_delta=False) > 1e-1


def test_fourier_is_further_from_linear_than_sincos():
    """Share of the noiseless factors' variance that a least-squares linear fit of the embedding
    explains, on 600 identities (more than the 512 embedding dimensions would overfit)."""
    embeddings = synth_embeddings(600, 0)

    def linear_share(spec: SynthSpec) -> float:
        _, truth = _vectors(spec, 600, embeddings=embeddings)
        x = torch.cat([embeddings, torch.ones(600, 1)], 1).double()
        y = truth.double() - truth.double().mean(0)
        fit = x @ torch.linalg.lstsq(x, y).solution
        return 1 - float((y - fit).square().sum() / y.square().sum())

    linear = linear_share(SynthSpec(noise=0.0, manifold_dim=4, dependence="linear"))
    sincos = linear_share(SynthSpec(noise=0.0, manifold_dim=4))
    fourier = linear_share(SynthSpec(noise=0.0, manifold_dim=4, dependence="fourier", frequency=3.0))
    assert linear > 0.99 and linear > sincos > fourier


@pytest.mark.parametrize("alpha", ["27", "per-module"])
def test_alpha_knob_sets_the_files_alpha_and_keeps_delta_w(tmp_path, alpha):
    write_synth(tmp_path, SMALL, 3, SynthSpec(noise=0.0, alpha=alpha), progress=False, truth=True)
    alphas = []
    for i in range(3):
        lora = read_lora(tmp_path / f"id-{i:05d}" / "lora.safetensors")
        truth = read_lora(tmp_path / f"id-{i:05d}" / "truth.safetensors")
        alphas.append({name: m.alpha for name, m in lora.items()})
        for name, module in lora.items():
            assert torch.allclose(module.delta(), truth[name].delta(), rtol=1e-4, atol=1e-9)
    assert alphas[0] == alphas[1] == alphas[2]  # one alpha per module, whatever the identity
    if alpha == "27":
        assert set(alphas[0].values()) == {27.0}
    else:
        assert set(alphas[0].values()) <= {1.0, 2.0, 4.0, 8.0} and len(set(alphas[0].values())) > 1
    random_alphas = []
    write_synth(tmp_path / "random", SMALL, 3, SynthSpec(noise=0.0), progress=False)
    for i in range(3):
        random_alphas.append({n: m.alpha for n, m in read_lora(tmp_path / "random" / f"id-{i:05d}" /
                                                                 "lora.safetensors").items()})
    assert not random_alphas[0] == random_alphas[1] == random_alphas[2]  # today's: drawn per identity


def _file_tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_same_seed_same_family_member_other_seed_other(tmp_path):
    member = dict(manifold_dim=5, noise=0.3, dependence="fourier", frequency=2.5, factor_scale=0.01, alpha="per-module")
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_synth(tmp_path / name, SMALL, 3, SynthSpec(seed=seed, **member), progress=False, truth=True)
    for file in ("lora.safetensors", "truth.safetensors", "embedding.safetensors"):
        a, b, c = (_file_tensors(tmp_path / n / "id-00002" / file) for n in "abc")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)
    described = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert {k: described[k] for k in member} == member and described["truth_file"] == "truth.safetensors"


def test_dataset_builder_ignores_the_truth_files(tmp_path):
    write_synth(tmp_path / "with", SMALL, 4, SynthSpec(), progress=False, truth=True)
    write_synth(tmp_path / "without", SMALL, 4, SynthSpec(), progress=False)
    built = [build_dataset(tmp_path / n, tmp_path / f"data-{n}", heldout=0.25, progress=False)
             for n in ("with", "without")]
    assert all(not b.skipped for b in built)
    (va, _, ia), (vb, _, ib) = (open_dataset(tmp_path / f"data-{n}").load("train") for n in ("with", "without"))
    assert ia == ib and torch.equal(va, vb)


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "many"], "--alpha"), (["--alpha", "-1"], "--alpha"), (["--factor-scale", "0"], "--factor-scale"),
    (["--dependence", "fourier", "--frequency", "0"], "--frequency"), (["--rank", "0"], "--rank"),
    (["--modules", "0"], "--modules")])
def test_bad_knobs_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["synth", "--layout", "tiny-attn-r4", "--identities", "2", "--out", str(tmp_path / "x"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_issue_19_collection_shape():
    """The collection of issue 19: 24 SDXL attention modules at rank 2, about 118k values."""
    layout = family_layout(preset("sdxl-attn-r4"), rank=2, modules=24)
    assert len(layout) == 24 and layout.ranks == {2} and 110_000 < layout.num_values < 130_000
    assert math.isclose(layout.num_values, 122_880)
