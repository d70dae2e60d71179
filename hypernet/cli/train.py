"""`python -m hypernet train`: the weight autoencoder, then the prior (hypernet.pipeline.training)."""
from __future__ import annotations

import argparse
import dataclasses
import time

from ..model.condition import CONDITIONS
from ..pipeline.train_config import PRESETS, load_train_config
from ..pipeline.training import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder from `python -m hypernet dataset`")
    parser.add_argument("--out", required=True, help="hypernet checkpoint to write (.safetensors)")
    parser.add_argument("--config", help=f"preset ({', '.join(PRESETS)}) or JSON file of overrides "
                                         "(optionally with \"preset\"); default: default")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run saved in OUT.resume")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--condition", choices=CONDITIONS,
                        help="override the config's condition: face (default), global or face+global; the "
                             "last two need a dataset with global image features")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.condition is not None:
        cfg = dataclasses.replace(cfg, condition=args.condition)
    started = time.perf_counter()
    model = train(args.data, args.out, cfg, resume=args.resume, overwrite=args.overwrite, device=args.device,
                  progress=not args.quiet)
    counts = model.parameter_counts()
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s: autoencoder {counts['autoencoder']:,} and "
          f"prior {counts['prior']:,} parameters")
    return 0
