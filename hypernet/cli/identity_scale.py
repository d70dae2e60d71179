"""`python -m hypernet identity-scale`: a copy of a hypernet checkpoint whose decoded LoRAs are
moved `--scale` times as far from the training mean (HypernetConfig.identity_scale).

Choose the scale by what the base model draws for identities the hypernet did not train on (the
typeface miniature scores candidates with `evaluate-images` on its dataset's held-out split:
`miniature/run.py`), never on the identities you report.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..model.checkpoint import hypernet_metadata, load_hypernet, read_header, save_hypernet
from ..model.hypernet import MAX_IDENTITY_SCALE
from ..pipeline.outputs import check_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="hypernet checkpoint (.safetensors)")
    parser.add_argument("--scale", required=True, type=float,
                        help=f"factor above 0, at most {MAX_IDENTITY_SCALE:g}: 1 decodes as trained, 2 twice as far "
                             "from the mean LoRA")
    parser.add_argument("--out", required=True, type=Path, help="the new checkpoint (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def write_scaled(ckpt: Path, scale: float, out: Path) -> None:
    """Atomically write `ckpt` with identity_scale `scale`; its other metadata is kept."""
    model = load_hypernet(ckpt)
    model.config = replace(model.config, identity_scale=scale)  # validates the scale
    metadata, _ = read_header(ckpt)
    written = hypernet_metadata(model)  # what save_hypernet writes itself (the new config among it)
    save_hypernet(model, out, {k: v for k, v in metadata.items() if k not in written})


def run(args) -> int:
    check_output(args.out, args.overwrite)
    write_scaled(args.ckpt, args.scale, args.out)
    print(f"wrote {args.out}: identity scale {args.scale:g}")
    return 0
