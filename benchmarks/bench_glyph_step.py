"""Training step time of the glyph base model at 16x16 (4x8x8 latents) and 32x32 (4x16x16),
on glyphs of the font Pillow embeds: prints a table (seconds per step, median of the timed steps).

    OMP_NUM_THREADS=1 python benchmarks/bench_glyph_step.py [--steps 10] [--batch 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from miniature.comfy_setup import import_comfy
    import_comfy()
    from PIL import ImageFont

    from miniature.base_model import DEFAULT_CHARSET
    from miniature.glyphs import compose, glyph_masks
    from miniature.pixel_fold import glyphs_to_latents
    from miniature.train_base import PRESETS, Trainer
    masks = glyph_masks(ImageFont.load_default(size=256), DEFAULT_CHARSET)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| glyph | latent | s/step (median) |\n|---|---|---|")
    for size in (16, 32):
        latents = glyphs_to_latents(torch.from_numpy(compose(masks, size)))
        options = dict(PRESETS["default"], batch=args.batch, steps=args.steps, warmup=0)
        trainer = Trainer(Namespace(**options, seed=0, charset=DEFAULT_CHARSET, size=size, font_names=["pillow"]),
                          latents, torch.arange(1, len(DEFAULT_CHARSET) + 1))
        trainer.train_step()  # first step allocates
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        print(f"| {size}x{size} | 4x{size // 2}x{size // 2} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
