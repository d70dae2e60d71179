"""python -m miniature COMMAND: the typeface miniature's data steps.

  fetch-test-fonts   the one small package the tests use, into the font cache (setup runs it)
  fetch-fonts        every font of the curated list, SHA-256 checked
  build-font-list    candidate packages -> curated list (prints the families left after each filter)
  train-encoder      the typeface encoder (ArcFace loss, train families), held-out verification,
                     weights + ONNX recognition model under .cache/miniature/encoder
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hypernet.errors import HypernetError

from .debian_packages import TEST_PACKAGE, fetch_package
from .font_list import FONT_LIST_FILE, PACKAGES_FILE, build, read_list, read_packages, resolve, write_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch-test-fonts")
    fetch = sub.add_parser("fetch-fonts")
    fetch.add_argument("--list", default=str(FONT_LIST_FILE))
    build_p = sub.add_parser("build-font-list")
    build_p.add_argument("--packages", default=str(PACKAGES_FILE))
    build_p.add_argument("--out", default=str(FONT_LIST_FILE))
    enc = sub.add_parser("train-encoder")
    enc.add_argument("--list", default=str(FONT_LIST_FILE))
    enc.add_argument("--out", default=None)
    enc.add_argument("--steps", type=int, default=600)
    enc.add_argument("--batch", type=int, default=64)
    enc.add_argument("--glyphs-per-sample", type=int, default=4)
    enc.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Measured: one thread is fastest on a busy 2-core machine.
    torch.set_num_threads(1)
    try:
        if args.command == "fetch-test-fonts":
            print(fetch_package(*TEST_PACKAGE))
        elif args.command == "fetch-fonts":
            files = resolve(read_list(Path(args.list)))
            print(f"{len(files)} fonts present, SHA-256 as listed")
        elif args.command == "train-encoder":
            from .encoder_cli import DEFAULT_OUT, train_and_export
            report = train_and_export(Path(args.list), Path(args.out) if args.out else DEFAULT_OUT, args.steps,
                                      args.batch, args.glyphs_per_sample, args.seed)
            print(json.dumps(report, indent=1))
        else:
            entries, counts = build(read_packages(Path(args.packages)), log=lambda m: print(m, file=sys.stderr))
            write_list(entries, Path(args.out))
            for step, n in counts.items():
                print(f"{n:6d}  {step}")
    except HypernetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
