"""What evaluate-images costs on the typeface miniature's glyph model, per piece of its work:
drawing a row of glyphs (one sampler call per seed, as Glyph Prompt + KSampler), a training step
of the per-identity / Refine LoRA on the references, embedding a specimen sheet; and from these
the minutes of a whole evaluation, for `make miniature` to budget.

Random weights: the glyph model's cost does not depend on them. The recogniser is the tests'
ArcFace-shaped stand-in in aligned-crop mode (the typeface encoder costs more: measure it with
--embedding-model).

    .venv/bin/python benchmarks/bench_evaluate_images.py [--runs 3] [--prompts 8] [--steps 20]
        [--heldout 20] [--seeds 2] [--train-steps 200] [--refine-steps 20] [--embedding-model DIR]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import _bench

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from face_models import write_face_models  # noqa: E402
from glyph_support import pillow_glyphs, random_glyph_model  # noqa: E402

CHARSET = "ABCDEFGHIJabcdefghij0123456789"
METHODS_THAT_DRAW = 6  # base, nearest, mean, hypernet, hypernet + Refine, per-identity LoRA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="glyphs per row (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: %(default)s)")
    parser.add_argument("--references", type=int, default=20, help="reference glyphs per identity")
    parser.add_argument("--heldout", type=int, default=20, help="held-out families in the estimate")
    parser.add_argument("--seeds", type=int, default=2, help="seeds in the estimate")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--refine-steps", type=int, default=20)
    parser.add_argument("--embedding-model", type=Path, help="recogniser folder (default: the tests' stand-in)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ.setdefault("COMFYUI_PATH", str(_bench.comfy_support.COMFYUI_PATH))
    from hypernet.cli.evaluate_images import load_renderer_package
    from hypernet.lora.presets import preset
    from hypernet.pipeline.evaluate_images import Embedder
    package = load_renderer_package()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = random_glyph_model(work / "glyph.safetensors", charset=CHARSET)
        folder = args.embedding_model
        if folder is None:
            paths = write_face_models(work / "rec")
            paths["detector"].unlink()
            folder = paths["folder"]
        glyphs = pillow_glyphs(CHARSET[:args.references], 16).numpy()
        photos = []
        for char, glyph in zip(CHARSET, glyphs):
            photos.append(work / f"{ord(char):04x}.png")
            Image.fromarray(glyph).save(photos[-1])
        renderer = package.Renderer(base, package.DrawSettings(steps=args.steps))
        embedder = Embedder(folder, True, renderer.embedding_views)
        prompts = list(CHARSET[:args.prompts])
        layout = preset("tiny-attn-r4")
        draw = _bench.repeat(lambda: renderer.draw(None, prompts, [0]), args.runs)
        captions = list(CHARSET[:len(photos)])
        one = _bench.repeat(lambda: renderer.train(photos, captions, layout, steps=1, learning_rate=1e-3, seed=0),
                            args.runs)
        more = _bench.repeat(lambda: renderer.train(photos, captions, layout, steps=11, learning_rate=1e-3, seed=0),
                             args.runs)
        step = (more.median - one.median) / 10
        sheets = renderer.embedding_views(np.repeat(glyphs[:, :, :, None], 3, axis=3))
        embed = _bench.repeat(lambda: [embedder.inner.embed_image(s) for s in sheets], args.runs)
        per_sheet = embed.median / len(sheets)
    _bench.heading("evaluate-images on the glyph model (16 px glyphs)", _bench.command_line())
    _bench.table(("piece", "seconds, median (min-max)"), [
        (f"draw one row of {args.prompts} glyphs ({args.steps} steps, cfg 3, one sampler call)", draw.fmt()),
        (f"train setup + 1 step on {len(photos)} references (encode, loss draws)", one.fmt()),
        ("each further training step (batch 1)", f"{step:.3f}"),
        (f"embed {len(sheets)} specimen sheets of {len(photos)} reference glyphs", embed.fmt()),
    ])
    per_identity = (METHODS_THAT_DRAW * args.seeds * (draw.median + per_sheet)
                    + 2 * one.median + (args.train_steps + args.refine_steps) * step + embed.median)
    print(f"Estimate for {args.heldout} held-out families, {METHODS_THAT_DRAW} methods, {args.seeds} seeds, "
          f"{args.prompts} glyphs per row, a per-family LoRA of {args.train_steps} steps trained here and "
          f"{args.refine_steps} Refine steps: {per_identity:.1f} s per family, "
          f"{args.heldout * per_identity / 60:.1f} minutes in all (hypernet sampling not included).")


if __name__ == "__main__":
    main()
