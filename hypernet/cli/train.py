"""`python -m hypernet train`: the weight autoencoder, then the prior (hypernet.pipeline.training)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from ..model.condition import CONDITIONS
from ..data.dataset import open_dataset
from ..model.checkpoint import read_header
from ..pipeline.auto_config import auto_train_config
from ..pipeline.train_config import AUTO, PRESETS, load_train_config
from ..pipeline.training import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder from `python -m hypernet dataset`")
    parser.add_argument("--out", required=True, help="hypernet checkpoint to write (.safetensors)")
    parser.add_argument("--config", help=f"preset ({', '.join(PRESETS)}), auto (chosen from the dataset, with a "
                                         "validation split, early stopping and a choice between the prior, ridge "
                                         "regression and a kernel mean: hypernet/pipeline/auto_config.py) or JSON "
                                         "file of overrides (optionally with \"preset\"); default: auto, or preset "
                                         "default for --condition global / face+global, which auto does not handle")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run saved in OUT.resume")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--condition", choices=CONDITIONS,
                        help="override the config's condition: face (default), global or face+global; the "
                             "last two need a dataset with global image features")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    choices, config = None, args.config
    if config is None:
        config = AUTO if (args.condition or "face") == "face" else "default"
        if config != AUTO:
            print(f"train: --condition {args.condition} trains with preset default (auto chooses for the face "
                  "condition only); --config picks another")
    if config == AUTO:
        cfg, choices = auto_train_config(open_dataset(args.data), seed=args.seed or 0,
                                         condition=args.condition or "face")
        for line in choices:
            print(f"auto: {line}")
    else:
        cfg = load_train_config(config)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        if args.condition is not None:
            cfg = dataclasses.replace(cfg, condition=args.condition)
    started = time.perf_counter()
    model = train(args.data, args.out, cfg, resume=args.resume, overwrite=args.overwrite, device=args.device,
                  progress=not args.quiet, choices=choices)
    counts = model.parameter_counts()
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s: autoencoder {counts['autoencoder']:,} and "
          f"prior {counts['prior']:,} parameters")
    metadata = read_header(args.out)[0]
    if "validation" in metadata:
        early = json.loads(metadata["validation"])
        print(f"early stopping: best validation loss {early['best_loss']:.4g} at prior step {early['best_step']}"
              + (", stopped on a plateau" if early.get("stopped") else ""))
        if "lr_search" in early:
            runs = ", ".join(f"{t['lr']:g}: " + ("not run (the runs before left too few of the steps)"
                                                 if t.get("skipped") else "diverged" if t.get("diverged")
                                                 else f"{t['best_loss']:.4g}")
                             for t in early["lr_search"])
            print(f"prior learning rate {early['prior_lr']:g}, the lowest validation loss of {runs}")
    if "auto" in metadata:
        auto = json.loads(metadata["auto"])
        print(f"auto: samples with {auto['sampler']}; {auto['statement']}")
    return 0
