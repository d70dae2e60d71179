"""Writes tests/data/synth_golden.safetensors: what `synth` wrote before the generator family
existed (run once with the code of main at d0b2557, before issue 19).

For two specs (the defaults, and another seed / manifold dimension / noise) on a small layout
(the first 6 modules of tiny-attn-r4) it records every tensor of three identities' lora.safetensors
and embedding.safetensors, their metadata and synth.json. tests/test_synth_family.py writes
the same collections with the current code and demands the same metadata and synth.json
exactly and the same tensors within float tolerance (another CPU kind may round differently).

    .venv/bin/python tests/data/make_synth_golden.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypernet.data.synth import SynthSpec, write_synth  # noqa: E402
from hypernet.lora.layout import Layout  # noqa: E402
from hypernet.lora.presets import preset  # noqa: E402

GOLDEN = Path(__file__).with_name("synth_golden.safetensors")
SPECS = {"default": SynthSpec(), "other": SynthSpec(seed=7, manifold_dim=3, noise=0.3)}
IDENTITIES = 3
FILES = ("lora.safetensors", "embedding.safetensors")


def small_layout() -> Layout:
    tiny = preset("tiny-attn-r4")
    return Layout(tiny.modules[:6], tiny.base_model)


def collection_contents(folder: Path) -> tuple[dict, dict]:
    """(tensors keyed 'id/file/key', metadata keyed 'id/file' plus 'synth.json')."""
    tensors, metadata = {}, {"synth.json": (folder / "synth.json").read_text()}
    for i in range(IDENTITIES):
        for name in FILES:
            path = folder / f"id-{i:05d}" / name
            with safe_open(str(path), "pt") as f:
                metadata[f"id-{i:05d}/{name}"] = json.dumps(f.metadata(), sort_keys=True)
                tensors.update({f"id-{i:05d}/{name}/{k}": f.get_tensor(k) for k in f.keys()})
    return tensors, metadata


def main() -> None:
    tensors, metadata = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in SPECS.items():
            write_synth(Path(tmp) / label, small_layout(), IDENTITIES, spec, progress=False)
            t, m = collection_contents(Path(tmp) / label)
            tensors.update({f"{label}/{k}": v for k, v in t.items()})
            metadata.update({f"{label}/{k}": v for k, v in m.items()})
    save_file(tensors, str(GOLDEN), metadata)
    print(f"wrote {GOLDEN} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
