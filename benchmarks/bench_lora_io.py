"""Time and peak memory of reading, canonicalising and flattening synthetic SDXL LoRAs.

    python benchmarks/bench_lora_io.py [--identities 32] [--layout sdxl-attn-r4] [--dir DIR]

Writes `python -m hypernet synth` output into DIR (a temp dir by default; an existing DIR with
enough identities of the same layout is reused) and prints one table row per stage: total and
per-file time, and the peak resident memory of the stage above what the process held before.
Peak RSS per stage comes from Linux's VmHWM, reset through /proc/self/clear_refs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _memory import PeakRss  # noqa: E402  (benchmarks/ is on the path when run as a script)

from hypernet.lora.canonical import canonicalize  # noqa: E402
from hypernet.lora.presets import load_layout  # noqa: E402
from hypernet.lora.lora_io import read_lora  # noqa: E402
from hypernet.data.synth import write_synth  # noqa: E402
from hypernet.lora.vectorize import flatten  # noqa: E402


class Stage(PeakRss):
    """`with Stage(name, files) as s: ...` then s.seconds, and PeakRss's s.extra and s.after (MiB)."""

    def __init__(self, name: str, files: int):
        self.name, self.files = name, files

    def __enter__(self):
        super().__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        super().__exit__(*exc)


def reusable(root: Path, layout, identities: int) -> bool:
    """Whether `root` already holds a synth collection of the layout with enough identities."""
    info = root / "synth.json"
    if not info.is_file():
        return False
    written = json.loads(info.read_text())
    return written.get("identities", 0) >= identities and written["layout"] == layout.to_dict()


def read_stages(files: list[Path], layout) -> list[Stage]:
    """Read, canonicalise and flatten the files, each stage on its own, then streamed."""
    n, stages = len(files), []
    with Stage("read_lora", n) as stage:
        loras = [read_lora(f) for f in files]
    stages.append(stage)
    with Stage("canonicalize", n) as stage:
        canon = [canonicalize(w, layout) for w in loras]
    stages.append(stage)
    del canon
    with Stage("flatten (canonicalises)", n) as stage:
        vectors = torch.stack([flatten(w, layout) for w in loras])
    stages.append(stage)
    del loras, vectors
    with Stage("read+flatten, streamed", n) as stage:
        vectors = torch.empty(n, layout.num_values)
        for i, f in enumerate(files):
            vectors[i] = flatten(read_lora(f), layout)
    stages.append(stage)
    return stages


def print_table(layout_name: str, layout, files: list[Path], stages: list[Stage]) -> None:
    size_mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"layout {layout_name}: {len(layout)} modules, {layout.num_values:,} values per LoRA; "
          f"{len(files)} files, {size_mib:.0f} MiB on disk; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'stage':<26} {'total s':>8} {'ms/file':>8} {'peak +RSS MiB':>14} {'RSS after MiB':>14}")
    for s in stages:
        print(f"{s.name:<26} {s.seconds:>8.2f} {1000 * s.seconds / s.files:>8.1f} {s.extra:>14.0f} {s.after:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=32)
    parser.add_argument("--layout", default="sdxl-attn-r4")
    parser.add_argument("--dir", type=Path, help="synth folder to write or reuse (default: a temp dir)")
    args = parser.parse_args()
    layout = load_layout(args.layout)
    with tempfile.TemporaryDirectory(prefix="bench_lora_io_") as tmp:
        root = args.dir or Path(tmp)
        stages = []
        if not reusable(root, layout, args.identities):
            with Stage("synth (write files)", args.identities) as stage:
                write_synth(root, layout, args.identities, progress=False)
            stages.append(stage)
        files = [root / f"id-{i:05d}" / "lora.safetensors" for i in range(args.identities)]
        stages += read_stages(files, layout)
        print_table(args.layout, layout, files, stages)


if __name__ == "__main__":
    main()
