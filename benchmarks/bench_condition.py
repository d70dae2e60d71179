"""Face only vs face + global features (DiffLoRA's gated fusion), side by side on the same
held-out identities of synthetic collections. Prints one table.

Two collections (`synth --global-dim G`), same seed and identities: in `face+global` the LoRA
is a smooth function of both a face vector and an independent global vector; in `face` the
global vectors exist but the LoRA ignores them. For each collection the weight autoencoder is
trained once (the autoencoder phase does not depend on the condition), then one prior per
variant (condition x denoiser kind) on its latents, each evaluated with `hypernet.pipeline.evaluate`
on the collection's held-out identities.

    .venv/bin/python benchmarks/bench_condition.py --work bench_work/condition

Everything is cached in --work (collections, datasets, checkpoints, timings), so a second run
only evaluates. `--threads 1` (the default) because a CPU shared with other jobs runs these
small models far slower with two threads than with one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hypernet.model.checkpoint import load_hypernet  # noqa: E402
from hypernet.data.dataset import open_dataset  # noqa: E402
from hypernet.data.builder import build_dataset  # noqa: E402
from hypernet.pipeline.evaluate import evaluate  # noqa: E402
from hypernet.lora.layout import Layout  # noqa: E402
from hypernet.lora.presets import preset  # noqa: E402
from hypernet.data.synth import SynthSpec, write_synth  # noqa: E402
from hypernet.pipeline.training import TrainConfig, load_train_config  # noqa: E402

from bench_hypernet import (  # noqa: E402  (benchmarks/ is on the path when run as a script)
    Timings, print_header, print_row, train_autoencoder_once, train_prior_variant)

SCENARIOS = ("face+global", "face")  # what the collection's LoRAs depend on
VARIANTS = ("face/mlp", "face+global/mlp", "face+global/transformer")  # condition/prior kind

# Ours, sized for a few minutes per model on one shared CPU core: 16 modules of tiny-attn-r4
# (8,192 values), an MLP autoencoder to a 64-d latent, AdaNorm priors (the conditioning measured
# to learn the face -> LoRA map in RESULTS.md), x0-prediction. The transformer cuts the 64-d
# latent into 8 tokens of 8.
BASE_CONFIG = {
    "preset": "default",
    "autoencoder": {"kind": "mlp", "latent_dim": 64, "hidden": 256, "blocks": 2},
    "prior": {"conditioning": "adanorm", "width": 256, "blocks": 2, "time_dim": 64,
              "tokens": 8, "token_width": 64, "depth": 3, "heads": 4},
    "ae_steps": 800, "ae_batch": 64, "prior_steps": 2500, "prior_batch": 128, "prior_lr": 1e-3,
    "checkpoint_every": 100000,
}


def bench_layout(modules: int) -> Layout:
    full = preset("tiny-attn-r4")
    return Layout(full.modules[:modules], full.base_model)


def scenario_dataset(work: Path, depends: str, args) -> Path:
    data = work / f"data-{depends}"
    if not (data / "manifest.json").is_file():
        collection = work / f"collection-{depends}"
        write_synth(collection, bench_layout(args.modules), args.identities,
                    SynthSpec(seed=args.seed, manifold_dim=args.manifold_dim, noise=args.noise),
                    progress=False, global_dim=args.global_dim, depends=depends)
        build_dataset(collection, data, heldout=args.heldout, progress=False)
    return data


def train_config(args, condition: str = "face", kind: str = "mlp") -> TrainConfig:
    overrides = json.loads(json.dumps(BASE_CONFIG))
    overrides.update(seed=args.seed, condition=condition)
    overrides["prior"]["kind"] = kind
    if args.prior_steps:
        overrides["prior_steps"] = args.prior_steps
    if args.ae_steps:
        overrides["ae_steps"] = args.ae_steps
    preset_name = overrides.pop("preset")
    base = load_train_config(preset_name).to_dict()
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(base)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench_work" / "condition")
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--heldout", type=float, default=0.1, help="held-out fraction")
    parser.add_argument("--modules", type=int, default=16, help="first N modules of tiny-attn-r4")
    parser.add_argument("--global-dim", type=int, default=64)
    parser.add_argument("--manifold-dim", type=int, default=8, help="manifold coordinates per source")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, help=f"default {BASE_CONFIG['ae_steps']}")
    parser.add_argument("--prior-steps", type=int, help=f"default {BASE_CONFIG['prior_steps']}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="condition/kind, comma-separated")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def print_heading(args: argparse.Namespace) -> None:
    cfg = train_config(args)
    print(f"Synthetic: {args.identities} identities ({args.heldout:.0%} held out), {args.modules} modules of "
          f"tiny-attn-r4, global dim {args.global_dim}, manifold {args.manifold_dim} per source, noise {args.noise}; "
          f"AE {cfg.ae_steps} steps, prior {cfg.prior_steps} steps ({cfg.prior.conditioning}); sampling "
          f"{args.seeds} seeds, {args.steps} DDIM steps, guidance {args.guidance}; CPU, {args.threads} thread(s).")
    header = ("LoRAs depend on", "condition", "prior", "prior train min", "sampled top1", "sampled cos",
              "diversity", "nearest-face top1", "mean top1", "ceiling top1")
    print_header(header)


def scenario_rows(args: argparse.Namespace, depends: str, timings: Timings):
    """One table row per variant on the collection whose LoRAs depend on `depends`."""
    dataset = open_dataset(scenario_dataset(args.work, depends, args))
    ae_file = train_autoencoder_once(dataset, args.work, train_config(args), timings, f"{depends}-autoencoder",
                                     progress=False)
    timings.save()
    for variant in args.variants.split(","):
        condition, kind = variant.split("/")
        key = f"{depends}-{condition}-{kind}"
        ckpt = train_prior_variant(dataset, args.work, ae_file, train_config(args, condition, kind), key, timings,
                                   progress=False)
        timings.save()
        result = evaluate(load_hypernet(ckpt), dataset, seeds=args.seeds, steps=args.steps,
                          guidance=args.guidance, progress=False)
        sampled, baselines = result["sampled"], result["baselines"]
        yield (depends, result["condition"], kind, f"{timings[key] / 60:.1f}", f"{sampled['top1']:.3f}",
               f"{sampled['cosine']:.3f}", f"{sampled['diversity']:.3f}",
               f"{baselines['nearest_embedding']['top1']:.3f}", f"{baselines['mean']['top1']:.3f}",
               f"{result['ceiling']['top1']:.3f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    timings = Timings(args.work / "timings.json")
    print_heading(args)
    for depends in args.scenarios.split(","):
        for row in scenario_rows(args, depends, timings):
            print_row(row)


if __name__ == "__main__":
    main()
