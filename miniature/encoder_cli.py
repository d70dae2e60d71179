"""``python -m miniature train-encoder``: the typeface encoder from the curated list's training
families, measured on the held-out ones, saved (safetensors) and exported as a recognition model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from hypernet.common.files import save_safetensors_atomic

from .encoder_onnx import export_recognizer
from .encoder_training import heldout_verification, render_families, train_encoder
from .font_list import read_list, resolve
from .typeface_encoder import TypefaceEncoder

DEFAULT_OUT = Path(__file__).resolve().parent.parent / ".cache" / "miniature" / "encoder"


def save_encoder(encoder: TypefaceEncoder, path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, path,
                            metadata={"miniature": json.dumps(info)})


def load_encoder(path: Path) -> TypefaceEncoder:
    encoder = TypefaceEncoder()
    encoder.load_state_dict(load_file(str(path)))
    return encoder.eval()


def train_and_export(list_path: Path, out: Path, steps: int, batch: int, per_sample: int, seed: int,
                     log=print) -> dict:
    entries = read_list(list_path)
    files = resolve(entries)
    train = [e for e in entries if e.split == "train"]
    heldout = [e for e in entries if e.split == "heldout"]
    t0 = time.perf_counter()
    train_glyphs = render_families([(files[e], e.index) for e in train])
    heldout_glyphs = render_families([(files[e], e.index) for e in heldout])
    log(f"rendered {len(train)} train and {len(heldout)} held-out families in {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:5d}  ArcFace loss {loss:.3f}  ({time.perf_counter() - t0:.0f} s)")

    result = train_encoder(train_glyphs, steps, batch=batch, per_sample=per_sample, seed=seed, on_step=progress)
    seconds = time.perf_counter() - t0
    report = {"steps": steps, "batch": batch, "glyphs per sample": per_sample, "seed": seed,
              "train families": len(train), "train seconds": round(seconds, 1),
              "threads": torch.get_num_threads(),
              "heldout": [heldout_verification(result.encoder, heldout_glyphs, k) for k in (1, 4, 8, 16)],
              "train (same measure)": heldout_verification(result.encoder, train_glyphs[:len(heldout)], 16)}
    save_encoder(result.encoder, out / "typeface_encoder.safetensors", report)
    onnx_path = export_recognizer(result.encoder, out / "insightface" / "typeface")
    report["onnx"] = str(onnx_path)
    return report
