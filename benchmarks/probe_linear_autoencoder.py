"""How close the `linear` autoencoder (leading principal directions, hypernet/model/autoencoder.py)
reconstructs a dataset's LoRAs, against issue 19's target "reconstruction error within 1.5x the
noise floor". Fits it as training does (aligned factors, the dim normaliser, closed form) on the
dataset's train split and prints the delta-W relative error on train and held-out LoRAs per
latent size; no prior is trained, so this is the autoencoder's part of the target only.

    python benchmarks/probe_linear_autoencoder.py --data DATASET [--latents 8 16 32 64 128] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypernet.data.dataset import open_dataset  # noqa: E402
from hypernet.lora.alignment import align, reference_factors  # noqa: E402
from hypernet.lora.vectorize import Normalizer  # noqa: E402
from hypernet.model.autoencoder import AutoencoderConfig, build_autoencoder  # noqa: E402
from hypernet.pipeline.evaluate import delta_rel_err  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a `python -m hypernet dataset` folder")
    parser.add_argument("--latents", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data)
    layout = dataset.layout
    train, _, _ = dataset.load("train")
    heldout, _, _ = dataset.load("heldout")
    reference = reference_factors(train, layout)
    train, heldout = align(train, reference, layout), align(heldout, reference, layout)
    norm = Normalizer.fit(train, layout, "dim")
    print(f"{args.data}: {len(train)} train / {len(heldout)} held-out LoRAs, {layout.num_values:,} values")
    print("| latent | train rel err (delta W) | held-out rel err (delta W) |\n|---|---|---|")
    for latent in args.latents:
        vae = build_autoencoder(layout.num_values, AutoencoderConfig(kind="linear", latent_dim=latent))
        vae.fit(norm.normalize(train))
        errors = []
        for vectors in (train, heldout):
            with torch.no_grad():
                recon = norm.denormalize(vae.decode(vae.encode(norm.normalize(vectors))[0]))
            errors.append(delta_rel_err(recon, vectors, layout))
        print(f"| {latent} | {errors[0]:.3f} | {errors[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
