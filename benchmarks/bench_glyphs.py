"""Milliseconds to render one font's 62 glyphs, and seconds per typeface-encoder training step.

    python benchmarks/bench_glyphs.py [--fonts 40] [--threads 1] [--steps 5] [--batch 64] [--glyphs-per-sample 4]

Fonts: the first N of the curated list (miniature/data/fonts.tsv) whose packages are in the font
cache, else fonts-urw-base35's OpenType faces. Prints the thread count and the load average
beside the numbers (a busy 2-core machine moves them a lot).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miniature.debian_packages import TEST_PACKAGE, default_cache  # noqa: E402
from miniature.encoder_training import render_families, sample_batch  # noqa: E402
from miniature.font_list import read_list  # noqa: E402
from miniature.glyphs import render_glyph_sizes  # noqa: E402
from miniature.typeface_encoder import ArcFaceLoss, TypefaceEncoder  # noqa: E402


def font_files(n: int) -> list[tuple[Path, int]]:
    found = []
    for e in read_list():
        path = default_cache() / "unpacked" / f"{e.package}_{e.version.replace(':', '%3a')}" / e.path
        if path.is_file():
            found.append((path, e.index))
        if len(found) == n:
            return found
    urw = default_cache() / "unpacked" / f"{TEST_PACKAGE[0]}_{TEST_PACKAGE[1]}"
    return found + [(p, 0) for p in sorted(urw.rglob("*.otf"))][: n - len(found)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fonts", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--glyphs-per-sample", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fonts = font_files(args.fonts)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {len(fonts)} fonts")
    print(f"{'what':44s} {'time':>10s}")
    for sizes in [(16,), (32,), (16, 32)]:
        start = time.perf_counter()
        for path, index in fonts:
            render_glyph_sizes(path, sizes=sizes, index=index)
        ms = (time.perf_counter() - start) / len(fonts) * 1000
        print(f"{'render 62 glyphs at ' + '+'.join(map(str, sizes)) + ' px, per font':44s} {ms:8.1f} ms")
    glyphs = render_families(fonts)
    encoder, loss_fn = TypefaceEncoder(), ArcFaceLoss(len(fonts))
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(loss_fn.parameters()))
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        sets, labels = sample_batch(glyphs, args.batch, args.glyphs_per_sample, gen)
        loss = loss_fn(encoder(sets), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    label = f"encoder step, batch {args.batch} x {args.glyphs_per_sample} glyphs (median)"
    print(f"{label:44s} {step:8.2f} s")


if __name__ == "__main__":
    main()
