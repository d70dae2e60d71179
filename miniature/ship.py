"""The trained miniature into the pack's own `models/` folder, where its nodes find it.

    models/glyph_models/typeface_glyphs.safetensors             the glyph base model (float16 already)
    models/lora_hypernets/typeface_hypernet.safetensors         the hypernet, tensors stored as float16
    models/insightface/models/typeface/typeface_arcface.onnx    the typeface encoder's recognition model

The pack registers these folders beside ComfyUI's own (nodes/shipped_models.py), so the
example workflow runs on a fresh install. Together they must stay under SHIP_LIMIT (issue 17:
16 MiB in git). The hypernet loader reads float16 tensors back as float32.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from hypernet.common.files import save_safetensors_atomic

SHIP_LIMIT = 16 * 2**20
GLYPH_FILE = "typeface_glyphs.safetensors"
HYPERNET_FILE = "typeface_hypernet.safetensors"
RECOGNIZER_FOLDER = "typeface"


def shipped_paths(models: Path) -> dict[str, Path]:
    return {"base": models / "glyph_models" / GLYPH_FILE, "hypernet": models / "lora_hypernets" / HYPERNET_FILE,
            "encoder": models / "insightface" / "models" / RECOGNIZER_FOLDER}


def half_copy(src: Path, dst: Path) -> None:
    """A safetensors file with every float tensor as float16 and the same metadata."""
    with safe_open(str(src), framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    halves = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    for key, value in halves.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{src}: tensor {key} overflows float16; ship it as float32 instead")
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(halves, dst, metadata)


def ship(paths, models: Path) -> dict[str, Path]:
    out = shipped_paths(models)
    out["base"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.base, out["base"])
    half_copy(paths.hypernet, out["hypernet"])
    out["encoder"].mkdir(parents=True, exist_ok=True)
    for onnx in paths.recognizer.glob("*.onnx"):
        shutil.copyfile(onnx, out["encoder"] / onnx.name)
    sizes = {name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []))
             for name, p in out.items()}
    total = sum(sizes.values())
    print("shipped: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items())
          + f"; {total / 2**20:.2f} MiB in all")
    if total > SHIP_LIMIT:
        raise SystemExit(f"the shipped miniature is {total / 2**20:.2f} MiB, over the {SHIP_LIMIT / 2**20:.0f} MiB "
                         "limit: make the hypernet smaller (Scale.hypernet_config)")
    return out
