"""Synthetic identity LoRAs: real kohya files, a smooth known map, mixed factors."""
from __future__ import annotations

import torch
from safetensors import safe_open

from hypernet.cli import main
from hypernet.lora.presets import preset
from hypernet.lora.lora_io import read_lora
from hypernet.data.synth import SynthSpec, manifold_features, mix_factors, synth_embeddings, synth_vectors, write_synth
from hypernet.lora.vectorize import flatten, unflatten

TINY = preset("tiny-attn-r4")


def test_cli_writes_kohya_files_and_embeddings(tmp_path):
    assert main(["synth", "--layout", "sdxl-qv-r1", "--identities", "2", "--out", str(tmp_path), "--seed", "5",
                 "--embedding-model", "insightface/antelopev2/w600k_r50.onnx"]) == 0
    layout = preset("sdxl-qv-r1")
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["id-00000", "id-00001"]
    vectors = []
    for folder in folders:
        lora = read_lora(folder / "lora.safetensors")
        assert lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0" and lora.metadata["synth_seed"] == "5"
        vectors.append(flatten(lora, layout))
        assert vectors[-1].shape == (725_760,)
        with safe_open(str(folder / "embedding.safetensors"), "pt") as f:
            emb = f.get_tensor("embedding")
            assert f.metadata()["embedding_model"] == "insightface/antelopev2/w600k_r50.onnx"
        assert emb.shape == (512,) and abs(float(emb.norm()) - 1) < 1e-5
    assert not torch.allclose(vectors[0], vectors[1])
    assert (tmp_path / "synth.json").is_file()


def _contents(path):
    """Tensors and metadata of a file (the header's key order is not fixed, so bytes can differ)."""
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _same_contents(a, b) -> bool:
    (meta_a, ta), (meta_b, tb) = _contents(a), _contents(b)
    return meta_a == meta_b and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_synth(tmp_path / "a", TINY, 2, SynthSpec(seed=1), progress=False)
    write_synth(tmp_path / "b", TINY, 2, SynthSpec(seed=1), progress=False)
    write_synth(tmp_path / "c", TINY, 2, SynthSpec(seed=2), progress=False)
    name = "id-00001/lora.safetensors"
    assert _same_contents(tmp_path / "a" / name, tmp_path / "b" / name)
    assert not _same_contents(tmp_path / "a" / name, tmp_path / "c" / name)


def test_group_size_does_not_change_the_result(tmp_path, monkeypatch):
    import hypernet.data.synth as synth
    write_synth(tmp_path / "big", TINY, 3, progress=False)
    monkeypatch.setattr(synth, "GROUP_BYTES", 1)  # one identity per group
    write_synth(tmp_path / "one", TINY, 3, progress=False)
    name = "id-00002/lora.safetensors"
    assert _same_contents(tmp_path / "big" / name, tmp_path / "one" / name)


def test_mixed_factors_canonicalise_to_the_ground_truth():
    spec = SynthSpec(noise=0.0)
    features = manifold_features(synth_embeddings(1, 0), spec).repeat(2, 1)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    truths = [unflatten(v, TINY) for v in synth_vectors(features, TINY, spec, gens)]
    mixed = [mix_factors(t, g) for t, g in zip(truths, gens)]
    name = TINY.names[0]
    assert not torch.allclose(mixed[0][name].up, mixed[1][name].up)  # the files differ...
    assert torch.allclose(mixed[0][name].delta(), truths[0][name].delta(), atol=1e-7)
    a, b, truth = flatten(mixed[0], TINY), flatten(mixed[1], TINY), flatten(truths[0], TINY)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, truth, atol=1e-5)  # ...their vectors do not


def test_lora_is_a_smooth_function_of_the_embedding_with_realistic_scale():
    spec = SynthSpec(noise=0.0)
    base = synth_embeddings(1, 0)[0]
    step = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    nudge = torch.nn.functional.normalize(base + 0.01 * step, dim=0)  # 0.01 away on the sphere
    other = synth_embeddings(2, 9)[1]
    features = manifold_features(torch.stack([base, nudge, other]), spec)
    loras = [unflatten(v, TINY) for v in synth_vectors(features, TINY, spec, [torch.Generator() for _ in range(3)])]
    deltas = [torch.cat([m.delta().reshape(-1) for m in lora.values()]) for lora in loras]
    near, far = (deltas[0] - deltas[1]).norm(), (deltas[0] - deltas[2]).norm()
    assert near < 0.05 * far
    assert 3e-4 < float(deltas[0].std()) < 3e-3  # delta W entries about 1e-3
