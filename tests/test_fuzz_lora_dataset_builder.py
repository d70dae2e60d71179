"""The dataset builder skips every folder whose LoRA or embedding file is hostile and writes
nothing for it (issue 14). The hostile files are lora_fuzz_support.CASES."""
from __future__ import annotations

import shutil

import torch
from lora_fuzz_support import CASES, _one_line
from safetensors.torch import save as save_bytes

from hypernet.data.builder import build_dataset
from hypernet.data.synth import write_synth
from hypernet.lora.presets import preset

# --- the dataset builder skips every such folder and writes nothing for it -------------------

def test_dataset_builder_skips_each_hostile_lora_and_writes_no_cache_for_it(tmp_path):
    tiny = preset("tiny-attn-r4")
    src = tmp_path / "src"
    write_synth(src, tiny, 2, progress=False)
    hostile = {}
    for i, (name, (data, _)) in enumerate(sorted(CASES.items())):
        folder = src / f"bad-{i:02d}"
        folder.mkdir()
        (folder / "lora.safetensors").write_bytes(data)
        shutil.copy(src / "id-00000" / "embedding.safetensors", folder / "embedding.safetensors")
        hostile[folder.name] = name
    out = tmp_path / "data"
    result = build_dataset(src, out, layout=tiny, heldout=0.0, progress=False)
    assert result.kept == ["id-00000", "id-00001"]
    skipped = {s["id"]: s for s in result.skipped}
    assert set(skipped) == set(hostile)
    for folder, entry in skipped.items():
        assert entry["kind"] == "unreadable or broken LoRA", (hostile[folder], entry)
        _one_line(entry["reason"])
        assert not (out / ".work" / f"{folder}.safetensors").exists()
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["id-00000.safetensors", "id-00001.safetensors"]


def test_dataset_builder_skips_each_hostile_embedding_file_and_writes_no_cache_for_it(tmp_path):
    """embedding.safetensors files come from the same strangers and go through the same header checks.
    (Their magnitude is harmless: every embedding is normalised, in float64.)"""
    tiny = preset("tiny-attn-r4")
    src = tmp_path / "src"
    write_synth(src, tiny, 2, progress=False)
    hostile = {name: data for name, (data, header_only) in CASES.items() if header_only}
    hostile.update({"int64 embedding": save_bytes({"embedding": torch.ones(512, dtype=torch.int64)}),
                    "embedding of 3 dimensions": save_bytes({"embedding": torch.ones(1, 1, 512)}),
                    "NaN embedding": save_bytes({"embedding": torch.full((512,), float("nan"))})})
    for i, data in enumerate(hostile.values()):
        folder = src / f"bad-{i:02d}"
        folder.mkdir()
        shutil.copy(src / "id-00000" / "lora.safetensors", folder / "lora.safetensors")
        (folder / "embedding.safetensors").write_bytes(data)
    out = tmp_path / "data"
    result = build_dataset(src, out, layout=tiny, heldout=0.0, progress=False)
    assert result.kept == ["id-00000", "id-00001"]
    assert len(result.skipped) == len(hostile)
    for entry in result.skipped:
        assert entry["kind"] == "bad embedding file", entry
        _one_line(entry["reason"])
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["id-00000.safetensors", "id-00001.safetensors"]
