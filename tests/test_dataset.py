"""The on-disk dataset: writing, splitting, reading back, and refusing broken datasets."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hypernet.common.tensors import mean_embedding
from hypernet.data.dataset import DatasetRecord, open_dataset, split_identities, write_dataset
from hypernet.errors import HypernetError
from hypernet.lora.presets import preset

LAYOUT = preset("tiny-attn-r4")


def _records(n: int, seed: int = 0) -> list[DatasetRecord]:
    gen = torch.Generator().manual_seed(seed)
    return [DatasetRecord.in_memory(f"person-{i:02d}", torch.randn(LAYOUT.num_values, generator=gen),
                                    mean_embedding(torch.randn(512, generator=gen)), lora_file=f"person-{i:02d}/l.safetensors",
                                    lora_sha256="ab" * 32, sources=[{"file": "x", "sha256": "cd" * 32}])
            for i in range(n)]


def test_written_dataset_loads_back_by_split(tmp_path):
    records = _records(10)
    # tiny shards so that rows spread over several files
    write_dataset(tmp_path, LAYOUT, "test-model", records, heldout_fraction=0.3, seed=1,
                  skipped=[{"id": "bad", "reason": "no face"}], max_shard_bytes=3 * 4 * (LAYOUT.num_values + 512))
    data = open_dataset(tmp_path)
    assert data.layout == LAYOUT and data.embedding_model == "test-model" and data.embedding_dim == 512
    assert len(data.ids("heldout")) == 3 and len(data.ids("train")) == 7
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 4  # 7 train in 3 shards, 3 held out in 1
    by_id = {r.id: r.tensors() for r in records}
    for split in ("train", "heldout"):
        vectors, embeddings, ids = data.load(split)
        assert ids == data.ids(split) and vectors.shape == (len(ids), LAYOUT.num_values)
        for row, identity in enumerate(ids):
            assert torch.equal(vectors[row], by_id[identity][0])
            assert torch.equal(embeddings[row], by_id[identity][1])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["skipped"] == [{"id": "bad", "reason": "no face"}]
    assert manifest["identities"][0]["sources"] == [{"file": "x", "sha256": "cd" * 32}]


def test_split_is_deterministic_by_identity_and_stable_when_adding():
    ids = [f"p{i}" for i in range(40)]
    first = split_identities(ids, 0.1, seed=3)
    assert first == split_identities(list(reversed(ids)), 0.1, seed=3)
    assert sum(s == "heldout" for s in first.values()) == 4
    assert first != split_identities(ids, 0.1, seed=4)
    grown = split_identities(ids + [f"q{i}" for i in range(4)], 0.1, seed=3)
    moved = [i for i in ids if grown[i] != first[i]]
    assert len(moved) <= 1
    with pytest.raises(HypernetError, match="too few"):
        split_identities(["only"], 0.1, seed=0)
    assert split_identities(["only"], 0.0, seed=0) == {"only": "train"}


def test_rewriting_removes_unused_shards(tmp_path):
    small = 4 * (LAYOUT.num_values + 512)
    write_dataset(tmp_path, LAYOUT, "m", _records(6), 0.0, 0, max_shard_bytes=small)
    assert len(list(tmp_path.glob("shard-*"))) == 6
    write_dataset(tmp_path, LAYOUT, "m", _records(2), 0.0, 0, max_shard_bytes=small)
    assert len(list(tmp_path.glob("shard-*"))) == 2
    assert len(open_dataset(tmp_path).load("train")[2]) == 2


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _rewrite(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_open_refuses_broken_datasets(tmp_path):
    with pytest.raises(HypernetError, match="no manifest.json"):
        open_dataset(tmp_path)
    write_dataset(tmp_path, LAYOUT, "m", _records(4), 0.25, 0)
    good = _manifest(tmp_path)

    _rewrite(tmp_path, {**good, "version": 99})
    with pytest.raises(HypernetError, match="version 99"):
        open_dataset(tmp_path)

    _rewrite(tmp_path, {**good, "format": "something"})
    with pytest.raises(HypernetError, match="not a LoRA hypernet dataset"):
        open_dataset(tmp_path)

    _rewrite(tmp_path, {**good, "embedding_dim": 256})
    with pytest.raises(HypernetError, match="embeddings has shape"):
        open_dataset(tmp_path)

    _rewrite(tmp_path, good)
    (tmp_path / "shard-00001.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(HypernetError, match="shard-00001.safetensors is missing"):
        open_dataset(tmp_path)

    save_file({"vectors": torch.zeros(1, 7), "embeddings": torch.zeros(1, 512)}, str(tmp_path / "shard-00001.safetensors"))
    with pytest.raises(HypernetError, match="vectors has shape"):
        open_dataset(tmp_path)

    with pytest.raises(HypernetError, match="unknown split"):
        write_dataset(tmp_path, LAYOUT, "m", _records(4), 0.25, 0)
        open_dataset(tmp_path).load("validation")


def test_mean_embedding_normalises_each_then_the_mean():
    a, b = torch.zeros(512), torch.zeros(512)
    a[0], b[1] = 10.0, 0.1  # very different norms weigh the same
    mean = mean_embedding(torch.stack([a, b]))
    assert torch.allclose(mean[:2], torch.tensor([2 ** -0.5, 2 ** -0.5]))
    with pytest.raises(HypernetError):
        mean_embedding(torch.zeros(512))


def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path):
    import os
    import stat

    from hypernet.common.files import save_safetensors_atomic, save_safetensors_new
    umask = os.umask(0o022)
    try:
        save_safetensors_atomic({"x": torch.zeros(1)}, tmp_path / "a.safetensors")
        assert save_safetensors_new({"x": torch.zeros(1)}, tmp_path / "b.safetensors")
    finally:
        os.umask(umask)
    for name in ("a.safetensors", "b.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
