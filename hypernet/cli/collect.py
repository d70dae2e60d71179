"""`python -m hypernet collect`: train one identity LoRA per photo folder (hypernet.collect)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..collect.jobs import DEFAULT_TEMPLATE, DEFAULT_TOKEN, LR_SCHEDULES, TrainingSettings, class_image_files
from ..collect.run import collect

DEFAULTS = TrainingSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path, metavar="IDENTITIES",
                        help="folder of identity folders, one per person, with reference photos (and optional "
                             "<photo>.txt captions)")
    parser.add_argument("--base", required=True, type=Path, metavar="CHECKPOINT",
                        help="the base model: a single-file checkpoint (.safetensors) as ComfyUI loads it, or the "
                             "typeface miniature's glyph model file (captions: one character per glyph image)")
    parser.add_argument("--layout", required=True, metavar="PRESET",
                        help="layout preset or layout JSON file: which modules the LoRAs train, at what rank/alpha")
    parser.add_argument("--out", required=True, type=Path, metavar="COLLECTION",
                        help="collection folder to write (the --src of `python -m hypernet dataset`); a re-run "
                             "continues it")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=DEFAULTS.steps, help="steps per identity (default: %(default)s)")
    train.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate,
                       help="default: %(default)s")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="learning rate over the steps: constant, or cosine decay to 0 (default: %(default)s)")
    train.add_argument("--batch", type=int, default=DEFAULTS.batch_size, help="images per step (default: %(default)s)")
    train.add_argument("--identities-per-step", type=int, default=1, metavar="K",
                       help="train K identities together: each step draws --batch images per identity and runs one "
                            "batched forward/backward, every sample seeing only its identity's LoRA; each LoRA is "
                            "as if trained alone. Faster for small latents (glyphs); no --class-images (default: 1)")
    train.add_argument("--eval-draws", type=int, default=DEFAULTS.eval_draws, metavar="N",
                       help="fixed noise/timestep draws per image behind the reported losses (default: %(default)s)")
    train.add_argument("--resolution", type=int, default=DEFAULTS.resolution,
                       help="training resolution in pixels (default: %(default)s)")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed,
                       help="run seed; each identity's seed comes from it and the identity's name (default: %(default)s)")
    train.add_argument("--caption-template", default=DEFAULT_TEMPLATE,
                       help="caption of photos without a .txt caption; {token} is replaced (default: %(default)r)")
    train.add_argument("--token", default=DEFAULT_TOKEN, help="the identity's token in captions (default: %(default)s)")
    train.add_argument("--class-images", metavar="DIR",
                       help="folder of class photos for prior preservation (e.g. other people)")
    train.add_argument("--init", type=Path, metavar="LORA",
                       help="start every identity from this LoRA (e.g. one sampled from a hypernet) instead of zero")
    train.add_argument("--face-model", type=Path, metavar="DIR",
                       help="insightface model folder: every photo must show a face, and the identity's embeddings "
                            "are written beside its LoRA")
    where = parser.add_argument_group("where to train")
    where.add_argument("--workers", type=int,
                       help="processes on this machine, each loading the base once (default 1); with --ray, the "
                            "most tasks in flight")
    where.add_argument("--ray", metavar="auto|local|ADDRESS",
                       help="train identities as Ray tasks, one GPU each where there are GPUs: `auto` joins this "
                            "machine's Ray cluster, `local` starts one here, or a cluster address")
    where.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    where.add_argument("--preload", action="append", default=[], metavar="MODULE_OR_PATH",
                       help="module, .py file or package folder to import in every worker before the base loads "
                            "(e.g. code that teaches ComfyUI a model format); repeatable")
    where.add_argument("--copy", action="store_true", help="copy the photos into the collection instead of hard-linking")
    where.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = TrainingSettings(
        steps=args.steps, learning_rate=args.learning_rate, batch_size=args.batch, resolution=args.resolution,
        seed=args.seed, caption_template=args.caption_template, token=args.token,
        class_images=class_image_files(args.class_images), eval_draws=args.eval_draws,
        lr_schedule=args.lr_schedule)
    result = collect(args.src, args.base, args.layout, args.out, settings=settings, workers=args.workers,
                     ray=args.ray, init_lora=args.init, face_model=args.face_model, preload=tuple(args.preload),
                     threads=args.threads, link_photos=not args.copy, progress=not args.quiet,
                     identities_per_step=args.identities_per_step)
    print(result.summary())
    print(f"next: python -m hypernet dataset --src {args.out} --layout {args.layout} --out DATASET"
          + ("" if args.face_model else " --face-model FACE_MODEL"))
    return 0 if result.complete else 3
