"""Why a diffusion prior can fall below the nearest-embedding baseline (issue 19): probes on a
dataset, printed as tables.

    python benchmarks/probe_adaptive.py --data DATASET [--identities 400] [--steps 800] [--threads 1]

To keep each probe to minutes on a CPU, the weight autoencoder is replaced by its linear
stand-in: the top `--latent` principal components of the aligned, per-dimension normalised
training LoRAs (`--identities` of them). On these latents the script measures

1. the latents: their scale before the latent normaliser, how much of their variance the face
   embedding explains (ridge face -> latent, R^2 on the held-out identities), beside the same for
   ridge face -> LoRA (R^2 of delta W), and the principal components' own reconstruction;
2. the prior as preset `default` trains it (AdaNorm MLP width 512, 4 blocks, x0, lr 1e-3, batch
   256, condition dropout 0.1, EMA) on these latents: its denoising loss on training and on
   held-out latents as it trains (overfitting), and the held-out top-1 of its samples at guidance
   0, 1 and 3 and with the conditions shuffled (does it use the condition?);
3. the same prior learning the residual around ridge face -> latent, early-stopped on a
   validation split of the training identities (what `train --config auto` does), and the
   sampling temperature;

beside the baselines of `evaluate` (mean, nearest embedding, ridge) on the same held-out rows.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypernet.common.tensors import l2_normalize, seeded_generator  # noqa: E402
from hypernet.data.dataset import open_dataset  # noqa: E402
from hypernet.lora.alignment import align, reference_factors  # noqa: E402
from hypernet.lora.vectorize import Normalizer  # noqa: E402
from hypernet.model.autoencoder import AutoencoderConfig  # noqa: E402
from hypernet.model.hypernet import Hypernet, HypernetConfig  # noqa: E402
from hypernet.model.prior_config import PriorConfig  # noqa: E402
from hypernet.pipeline.evaluate import _baselines  # noqa: E402
from hypernet.pipeline.metrics import compare  # noqa: E402
from hypernet.pipeline.ridge import choose_lambda, ridge_linear_map, validation_split  # noqa: E402
from hypernet.pipeline.sampling import sample_latents  # noqa: E402
from hypernet.pipeline.trainer import learning_rate  # noqa: E402


class PcaLatents:
    """The autoencoder's linear stand-in: normalised aligned vectors <-> top principal components."""

    def __init__(self, aligned: torch.Tensor, layout, k: int):
        self.layout = layout
        self.norm = Normalizer.fit(aligned, layout, "dim")
        x = self.norm.normalize(aligned)
        self.center = x.mean(0)
        _, s, v = torch.svd_lowrank(x - self.center, q=k, niter=4)
        self.basis = v  # [D, k]
        self.explained = float(s.square().sum() / (x - self.center).square().sum())

    def encode(self, aligned: torch.Tensor) -> torch.Tensor:
        return (self.norm.normalize(aligned) - self.center) @ self.basis

    def decode(self, coords: torch.Tensor) -> torch.Tensor:
        return self.norm.denormalize(coords @ self.basis.T + self.center)


def r_squared(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float(1 - (pred - true).square().sum() / (true - true.mean(0)).square().sum())


def fixed_draws(rows: torch.Tensor, face: torch.Tensor, model: Hypernet, draws: int = 8):
    gen = seeded_generator(0, "probe-draws", rows.shape[0])
    n = rows.shape[0] * draws
    return (rows.repeat(draws, 1), face.repeat(draws, 1),
            torch.randn(n, rows.shape[1], generator=gen), torch.randint(model.diffusion.cfg.timesteps, (n,), generator=gen))


@torch.no_grad()
def denoising_loss(model: Hypernet, prior, batch) -> float:
    x0, face, noise, t = batch
    return float(F.mse_loss(prior(model.diffusion.add_noise(x0, noise, t), t, face), x0))


def train_prior(model: Hypernet, latents, face, val, *, steps: int, every: int, patience: int | None):
    """The trainer's prior loop (x0, AdaNorm, EMA with warmup) on given latents; returns
    (history [(step, fit loss, val loss)], EMA weights at the best validation loss, best step)."""
    prior = model.prior.train()
    ema = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-3, weight_decay=0.0)
    scorer = copy.deepcopy(prior).eval()
    fit_batch = fixed_draws(latents[:len(val[0])], face[:len(val[0])], model)
    val_batch = fixed_draws(*val, model)
    history, best, best_step, since = [], None, 0, 0
    for step in range(steps):
        gen = seeded_generator(0, "probe-prior", step)
        idx = torch.randint(len(latents), (256,), generator=gen)
        t = torch.randint(model.diffusion.cfg.timesteps, (256,), generator=gen)
        noise = torch.randn(256, latents.shape[1], generator=gen)
        drop = torch.rand(256, generator=gen) < 0.1
        x0 = latents[idx]
        loss = F.mse_loss(prior(model.diffusion.add_noise(x0, noise, t), t, face[idx], drop), x0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(1e-3, step, steps, 100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in prior.state_dict().items():
                ema[key].lerp_(value, 1 - decay)
        if (step + 1) % every == 0:
            scorer.load_state_dict(ema)
            row = (step + 1, denoising_loss(model, scorer, fit_batch), denoising_loss(model, scorer, val_batch))
            history.append(row)
            if best is None or row[2] < best[0] * (1 - 1e-3):
                best, best_step, since = (row[2], {k: v.clone() for k, v in ema.items()}), step + 1, 0
            else:
                since += 1
            if patience is not None and since >= patience:
                break
    final = ema if patience is None else best[1]
    return history, final, best_step


def sampled_top1(model: Hypernet, pca: PcaLatents, stats, face, true, guidance: float, temperature: float = 1.0,
                 offset=None, seeds: int = 2) -> tuple[float, float]:
    import dataclasses
    model.config = dataclasses.replace(model.config, temperature=temperature)
    top1, rel = [], []
    for seed in range(seeds):
        z = sample_latents(model, face, seed=seed, guidance=guidance)
        if offset is not None:
            z = z + offset(face)
        result = compare(pca.decode(z * stats[1] + stats[0]), true, pca.layout)
        top1.append(result["top1"])
        rel.append(result["rel_err"])
    return sum(top1) / seeds, sum(rel) / seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--identities", type=int, default=400, help="training identities used (the first N)")
    parser.add_argument("--latent", type=int, default=128, help="principal components kept")
    parser.add_argument("--steps", type=int, default=800, help="prior steps (preset default: 2,000)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = open_dataset(args.data)
    layout = dataset.layout
    train_v, train_e, _ = dataset.load("train")
    train_v, train_e = train_v[:args.identities], l2_normalize(train_e[:args.identities])
    held_v, held_e, _ = dataset.load("heldout")
    held_e = l2_normalize(held_e)
    reference = reference_factors(train_v, layout)
    train_a, held_a = align(train_v, reference, layout), align(held_v, reference, layout)
    pca = PcaLatents(train_a, layout, args.latent)
    raw_train, raw_held = pca.encode(train_a), pca.encode(held_a)
    stats = (raw_train.mean(0), raw_train.std(0))
    z_train, z_held = (raw_train - stats[0]) / stats[1], (raw_held - stats[0]) / stats[1]

    print(f"# {dataset.path}: {len(train_v)} training identities (of the dataset's train split), "
          f"{len(held_v)} held out; {layout.num_values:,} values; {args.latent} principal components; "
          f"{args.threads} thread(s)\n")
    base = _baselines(train_v, train_e, held_v, held_e, layout)
    recon = compare(pca.decode(raw_held), held_v, layout)
    lam, _ = choose_lambda(train_e, z_train, lambda p, t: float((p - t).square().mean()))
    weight, bias = ridge_linear_map(train_e, z_train, lam)
    ridge_latent = compare(pca.decode((held_e @ weight + bias) * stats[1] + stats[0]), held_v, layout)
    spread = raw_train.std(0)
    print("| probe | value |\n|---|---|")
    print(f"| principal components: share of training variance | {pca.explained:.3f} |")
    print(f"| their reconstruction of held-out LoRAs: rel_err on delta W / top-1 | {recon['rel_err']:.3f} / "
          f"{recon['top1']:.3f} |")
    print(f"| latent std before the latent normaliser: largest / median / smallest | {float(spread.max()):.3g} / "
          f"{float(spread.median()):.3g} / {float(spread.min()):.3g} |")
    print(f"| ridge face -> latent: held-out R^2 of the normalised latents | {r_squared(held_e @ weight + bias, z_held):.3f} |")
    print(f"| ... of the first 8 components / of the rest | {r_squared((held_e @ weight + bias)[:, :8], z_held[:, :8]):.3f}"
          f" / {r_squared((held_e @ weight + bias)[:, 8:], z_held[:, 8:]):.3f} |")
    print(f"| ridge face -> latent, decoded: held-out top-1 / rel_err | {ridge_latent['top1']:.3f} / "
          f"{ridge_latent['rel_err']:.3f} |")
    ridge = base["ridge"]
    print(f"| baseline ridge face -> LoRA: top-1 / rel_err | {ridge['top1']:.3f} / {ridge['rel_err']:.3f} |")
    print(f"| baseline nearest embedding: top-1 | {base['nearest_embedding']['top1']:.3f} |")
    print(f"| baseline mean: top-1 | {base['mean']['top1']:.3f} |\n")

    config = HypernetConfig(layout=layout, embedding_model=dataset.embedding_model, embedding_dim=dataset.embedding_dim,
                            autoencoder=AutoencoderConfig(latent_dim=args.latent, hidden=1, blocks=0),
                            prior=PriorConfig(width=512, blocks=4, conditioning="adanorm"))
    rows = []
    # (2) preset default's prior on the latents, all training identities, fixed steps
    torch.manual_seed(0)
    model = Hypernet(config).eval()
    history, ema, _ = train_prior(model, z_train, train_e, (z_held, held_e), steps=args.steps, every=100, patience=None)
    print("| prior step | denoising loss, training latents | held-out latents |\n|---|---|---|")
    for step, fit, val in history:
        print(f"| {step} | {fit:.4f} | {val:.4f} |")
    model.prior.load_state_dict(ema)
    for guidance in (0.0, 1.0, 3.0):
        rows.append((f"default prior, guidance {guidance:g}", *sampled_top1(model, pca, stats, held_e, held_v, guidance)))
    shuffled = held_e[torch.randperm(len(held_e), generator=torch.Generator().manual_seed(0))]
    rows.append(("default prior, guidance 3, conditions shuffled",
                 *sampled_top1(model, pca, stats, shuffled, held_v, 3.0)))
    rows.append(("default prior, guidance 3, temperature 0", *sampled_top1(model, pca, stats, held_e, held_v, 3.0, 0.0)))

    # (3) the residual around ridge face -> latent, early-stopped on a validation split of the training rows
    fit, val = validation_split(len(z_train))
    lam, _ = choose_lambda(train_e[fit], z_train[fit], lambda p, t: float((p - t).square().mean()))
    w, b = ridge_linear_map(train_e[fit], z_train[fit], lam)
    residual = z_train - (train_e @ w + b)
    torch.manual_seed(0)
    model = Hypernet(config).eval()
    history, ema, best = train_prior(model, residual[fit], train_e[fit], (residual[val], train_e[val]),
                                     steps=args.steps, every=50, patience=5)
    model.prior.load_state_dict(ema)
    offset = lambda face: face @ w + b  # noqa: E731
    print(f"\nresidual prior: early-stopped at step {history[-1][0]}, best validation loss at step {best}\n")
    for temperature in (1.0, 0.0):
        for guidance in (1.0, 3.0):
            rows.append((f"ridge + residual prior (early-stopped), guidance {guidance:g}, temperature {temperature:g}",
                         *sampled_top1(model, pca, stats, held_e, held_v, guidance, temperature, offset)))
    print("| sampled on the held-out identities (2 seeds, 25 DDIM steps) | top-1 | rel_err on delta W |\n|---|---|---|")
    for label, top1, rel in rows:
        print(f"| {label} | {top1:.3f} | {rel:.3f} |")
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
