"""`python -m hypernet import-w2w`: weights2weights' LoRAs and photos as identity folders (hypernet.data.w2w)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.w2w import DIMENSIONS_FILE, ORDERS, WEIGHTS_FILE, import_w2w
from ..lora.w2w import W2W_PRESET

# The published files follow sd15-w2w; the tiny one is the same keys on the tests' tiny SD1.5 UNet.
W2W_LAYOUTS = (W2W_PRESET, "tiny-sd15-w2w")

PATHS = (
    ("--weights", "FILES_DIR", f"folder with weights2weights' {WEIGHTS_FILE} and {DIMENSIONS_FILE}"),
    ("--images", "IMAGES_DIR", "folder of identity folders (photos), one per row of the weights"),
    ("--out", "COLLECTION", "folder to write the identity folders to (the --src of `python -m hypernet dataset`)"),
)

SWITCHES = (("--copy", "copy the photos instead of hard-linking them"), ("--quiet", "no progress bar"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, metavar, help_text in PATHS:
        parser.add_argument(flag, required=True, type=Path, metavar=metavar, help=help_text)
    parser.add_argument("--order", choices=ORDERS, default="sorted",
                        help="order of the identity folders that the rows follow (default: %(default)s, "
                             "Python's string order of the names; natural: 2 before 10)")
    parser.add_argument("--layout", choices=W2W_LAYOUTS, default=W2W_PRESET,
                        help="layout preset of the rows (default: %(default)s, weights2weights' own)")
    for flag, help_text in SWITCHES:
        parser.add_argument(flag, action="store_true", help=help_text)


def run(args: argparse.Namespace) -> int:
    result = import_w2w(args.weights, args.images, args.out, order=args.order, link=not args.copy,
                        progress=not args.quiet, layout=args.layout)
    print(result.summary())
    print(f"next: python -m hypernet dataset --src {args.out} --layout {args.layout} --out DATASET --face-model FACE_MODEL")
    return 0
