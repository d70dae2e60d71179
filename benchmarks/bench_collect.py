"""Seconds per identity LoRA of `python -m hypernet collect` at the tiny size, on this CPU.

The real command (lora_training through ComfyUI) on the tiny SDXL stand-in checkpoint of the
tests (loaded through --preload tests/fixture_nodes), 64 px, one torch thread per worker, in
one process, in two worker processes and as tasks of a local Ray instance with two workers.
"wall" includes starting the workers and loading the base model in each (once per worker);
"per identity" is the median of the identity records' own seconds (training and writing).

    .venv/bin/python benchmarks/bench_collect.py [--identities 6] [--steps 16] [--photos 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench
from _bench import ROOT, TESTS

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from comfy_support import COMFYUI_PATH, TINY_TRAINABLE_CHECKPOINT_MARK, write_tiny_checkpoint  # noqa: E402
from face_models import synthetic_photo  # noqa: E402

MODES = {"1 process": (), "--workers 2": ("--workers", "2"), "--ray local --workers 2": ("--ray", "local", "--workers", "2")}


def write_identities(src: Path, identities: int, photos: int) -> None:
    for index in range(identities):
        folder = src / f"person{index}"
        folder.mkdir(parents=True)
        for k in range(photos):
            Image.fromarray(synthetic_photo(96, 96, [(16, 16, 56, index)], seed=10 * index + k)).save(folder / f"{k}.png")


def run(work: Path, mode: tuple[str, ...], args) -> tuple[float, list[dict], str]:
    out = work / f"out{len(list(work.glob('out*')))}"
    command = [sys.executable, "-m", "hypernet", "collect", "--src", str(work / "src"), "--base", str(work / "base.safetensors"),
               "--layout", args.layout, "--out", str(out), "--steps", str(args.steps), "--resolution", "64",
               "--threads", "1", "--preload", str(TESTS / "fixture_nodes"), "--quiet", *mode]
    env = dict(os.environ, COMFYUI_PATH=str(COMFYUI_PATH), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"collect failed:\n{result.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in out.glob("*/collect.json")]
    return wall, records, _bench.load_average()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--layout", default="tiny-attn-r4")
    args = parser.parse_args()
    rows = []
    measured_on = _bench.machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_identities(work / "src", args.identities, args.photos)
        write_tiny_checkpoint(work / "base.safetensors", TINY_TRAINABLE_CHECKPOINT_MARK)
        for name, mode in MODES.items():
            wall, records, load = run(work, mode, args)
            per_identity = statistics.median(r["seconds"] for r in records)
            rows.append((name, len(records), f"{wall:.1f}", f"{wall / len(records):.2f}", f"{per_identity:.2f}", load))
    _bench.heading(f"collect at the tiny size ({args.layout}, {args.steps} steps, {args.photos} photos of 64 px per "
                   "identity, 1 torch thread per worker)", _bench.command_line(), measured_on)
    _bench.table(("run", "identities", "wall s (with worker start and base load)", "wall s / identity",
                  "s per identity (median of records)", "load average after"), rows)


if __name__ == "__main__":
    main()
