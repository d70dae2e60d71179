"""`python -m hypernet synth`: write a synthetic collection of identity LoRAs (hypernet.data.synth)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.synth import DEPENDS, EMBEDDING_MODEL, GLOBAL_MODEL, SynthSpec, write_synth
from ..data.synth_family import DEFAULT_FREQUENCY, DEPENDENCES, family_layout
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
    family = parser.add_argument_group("generator family (issue 19; the defaults give today's synth)")
    family.add_argument("--dependence", choices=DEPENDENCES, default="sincos",
                        help="how the LoRA factors depend on the embedding (default: %(default)s; see "
                             "hypernet/data/synth_family.py)")
    family.add_argument("--frequency", type=float, default=DEFAULT_FREQUENCY,
                        help="frequency of the fourier dependence; higher is more nonlinear (default: %(default)s)")
    family.add_argument("--factor-scale", type=float, default=None,
                        help="scale of the LoRA factors, e.g. 1e-3 to 1e-1 (default: per rank, so that delta W "
                             "entries are about 1e-3)")
    family.add_argument("--alpha", default="random",
                        help="alpha written into the files: random (per identity and module), per-module, or a "
                             "number; delta W does not change (default: %(default)s)")
    family.add_argument("--rank", type=int, default=None, help="rank of every module (default: the layout's)")
    family.add_argument("--modules", type=int, default=None,
                        help="keep this many of the layout's modules, spread evenly over it (default: all)")
    family.add_argument("--truth", action="store_true",
                        help="also write each identity's noiseless LoRA as truth.safetensors (for the noise floor "
                             "in `evaluate --truth`)")


def run(args: argparse.Namespace) -> int:
    layout = family_layout(load_layout(args.layout), rank=args.rank, modules=args.modules)
    spec = SynthSpec(args.seed, args.manifold_dim, args.noise, dependence=args.dependence, frequency=args.frequency,
                     factor_scale=args.factor_scale, alpha=args.alpha)
    folders = write_synth(args.out, layout, args.identities, spec,
                          embedding_model=args.embedding_model, global_dim=args.global_dim, depends=args.depends,
                          global_model=args.global_model, truth=args.truth)
    extra = f", global vectors of {args.global_dim} values, LoRAs depend on {args.depends}" if args.global_dim else ""
    print(f"wrote {len(folders)} synthetic identities ({len(layout)} modules, {layout.num_values:,} values each"
          f"{extra}) to {args.out}")
    return 0
