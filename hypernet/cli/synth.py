"""`python -m hypernet synth`: write a synthetic collection of identity LoRAs (hypernet.data.synth)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.synth import DEPENDS, EMBEDDING_MODEL, GLOBAL_MODEL, SynthSpec, write_synth
from ..lora.presets import load_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, help="layout preset name or layout JSON file")
    parser.add_argument("--identities", type=int, required=True, help="how many identity folders to write")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifold-dim", type=int, default=16, help="dimension of the manifold the LoRAs lie near")
    parser.add_argument("--noise", type=float, default=0.05, help="per-identity noise relative to the factor scale")
    parser.add_argument("--embedding-model", default=EMBEDDING_MODEL,
                        help="name recorded as the embeddings' model (default: %(default)s)")
    parser.add_argument("--global-dim", type=int, default=0,
                        help="also write global vectors of this size (stand-ins for CLIP image features; default: none)")
    parser.add_argument("--depends", choices=DEPENDS, default="face",
                        help="what the LoRAs depend on (default: %(default)s; face+global needs --global-dim)")
    parser.add_argument("--global-model", default=GLOBAL_MODEL,
                        help="name recorded as the global vectors' encoder (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout)
    folders = write_synth(args.out, layout, args.identities, SynthSpec(args.seed, args.manifold_dim, args.noise),
                          embedding_model=args.embedding_model, global_dim=args.global_dim, depends=args.depends,
                          global_model=args.global_model)
    extra = f", global vectors of {args.global_dim} values, LoRAs depend on {args.depends}" if args.global_dim else ""
    print(f"wrote {len(folders)} synthetic identities ({len(layout)} modules, {layout.num_values:,} values each"
          f"{extra}) to {args.out}")
    return 0
