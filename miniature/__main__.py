"""python -m miniature COMMAND: the typeface miniature's data steps.

  fetch-test-fonts   the one small package the tests use, into the font cache (setup runs it)
  fetch-fonts        every font of the curated list, SHA-256 checked
  build-font-list    candidate packages -> curated list (prints the families left after each filter)
  train-encoder      the typeface encoder (ArcFace loss, train families), held-out verification,
                     weights + ONNX recognition model under .cache/miniature/encoder
  run                the whole experiment (`make miniature`): see miniature/run.py
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
    ref = sub.add_parser("reference-sheet", help="a listed family's specimen sheet (PNG), the image Face Embed takes")
    ref.add_argument("--family", required=True)
    ref.add_argument("--out", required=True)
    ref.add_argument("--list", default=str(FONT_LIST_FILE))
    ref.add_argument("--size", type=int, default=16, help="glyph size of the glyph model (default: %(default)s)")
    run = sub.add_parser("run", help="the whole experiment, stage by stage, resumable (make miniature)")
    run.add_argument("--work", default=".cache/miniature/run", help="where every stage writes (default: %(default)s)")
    run.add_argument("--scale", choices=("full", "ci"), default="full")
    run.add_argument("--stages", help="comma-separated subset of the stages (default: all)")
    run.add_argument("--font-list", help="curated font list (default: miniature/data/fonts.tsv)")
    run.add_argument("--collect-steps", type=int, help="override the scale's LoRA steps per identity")
    run.add_argument("--ship-to", help="models folder for the trained files (default: the pack's models/)")
    run.add_argument("--no-ship", action="store_true", help="leave the shipped files alone")
    run.add_argument("--results", help="folder of RESULTS.md / miniature.json (default: benchmarks/)")
    run.add_argument("--no-results", action="store_true", help="leave benchmarks/ alone")
    args = parser.parse_args(argv)
    if args.command == "run":
        from .run import main as run_main
        return run_main(args)
    # Measured: one thread is fastest on a busy 2-core machine.
    torch.set_num_threads(1)
    try:
        if args.command == "fetch-test-fonts":
            print(fetch_package(*TEST_PACKAGE))
        elif args.command == "fetch-fonts":
            files = resolve(read_list(Path(args.list)))
            print(f"{len(files)} fonts present, SHA-256 as listed")
        elif args.command == "reference-sheet":
            from PIL import Image

            from .identities import reference_sheet
            entries = [e for e in read_list(Path(args.list)) if e.family == args.family]
            if not entries:
                raise HypernetError(f"no family {args.family!r} in {args.list}")
            font = resolve(entries)[entries[0]]
            Image.fromarray(reference_sheet(font, entries[0].index, args.size)).save(args.out)
            print(f"wrote {args.out} ({entries[0].family}, {entries[0].split})")
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
