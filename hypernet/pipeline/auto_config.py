"""`train --config auto`: training settings chosen from the collection instead of a fixed preset
(issue 19). Everything here is our own choice, beyond LoRA Diffusion and DiffLoRA.

By rule, from the dataset (`auto_train_config`):

- autoencoder: the dense `mlp` VAE up to 400 k values per LoRA, the `chunks` one (as preset
  `sdxl`) above; latent size the power of two nearest a quarter of the training identities, between
  32 and 512: a latent much wider than the collection can fill only stores each LoRA's own noise,
  which the face cannot predict; steps for about 40 passes over the data (300 to 3,000).
- prior: preset `default`'s (AdaNorm, x0, lr 1e-3, measured in benchmarks/RESULTS.md), at most
  2,000 steps, early-stopped on a validation split of the training identities (trainer.py).
- offset "ridge": the prior models the residual around a ridge map face -> latent, so the part a
  linear map explains needs no learning and an untrained or early-stopped prior still gives it.

On the validation split, after training (`choose_sampling`): the temperature (1, 0.5 or 0 times
the starting noise) whose samples retrieve the validation identities best (top-1, then delta-W
error) at the guidance every caller uses by default (sampling.DEFAULT_GUIDANCE: the node, `sample`
and `evaluate` then sample what was validated), compared with ridge regression from the face to the LoRA on the
same split. When the hypernet does not beat ridge there, training says so in one line and
records it in the checkpoint (`auto` metadata), and the checkpoint keeps the choice that came
closest.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..data.dataset import LoraDataset
from ..model.hypernet import Hypernet
from .evaluate import ridge_baseline
from .metrics import compare
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, sample_latents
from .train_config import PRESETS, TrainConfig, _merge

MLP_LIMIT = 400_000
TEMPERATURES = (1.0, 0.5, 0.0)
GUIDANCES = (DEFAULT_GUIDANCE,)


def _nearest_power_of_two(value: float) -> int:
    return 2 ** round(math.log2(max(value, 1.0)))


def auto_train_config(dataset: LoraDataset, seed: int = 0, condition: str = "face") -> tuple[TrainConfig, list[str]]:
    """(the config, one line per choice saying what it was chosen from)."""
    n = len(dataset.ids("train"))
    fit = n - max(1, round(n * 0.1))
    values = dataset.layout.num_values
    base = _merge(dataclasses.asdict(TrainConfig()), PRESETS["default" if values <= MLP_LIMIT else "sdxl"])
    latent = min(512, max(32, _nearest_power_of_two(fit / 4)))
    ae_steps = min(3000, max(300, round(40 * fit / base["ae_batch"])))
    reasons = [f"{n} training identities, {fit} to fit and {n - fit} to validate on; {values:,} values per LoRA",
               f"autoencoder {base['autoencoder']['kind']}"
               + (f", latent {latent} (about a quarter of the identities)" if values <= MLP_LIMIT else "")
               + f", {ae_steps} steps (about 40 passes)",
               "prior: the residual around a ridge map face -> latent, early-stopped on the validation identities "
               "(at most 2,000 steps)"]
    if values <= MLP_LIMIT:
        base["autoencoder"]["latent_dim"] = latent
    base.update(seed=seed, condition=condition, ae_steps=ae_steps, prior_steps=2000, validation_every=100,
                patience=5, offset="ridge", choose_sampling=True, checkpoint_every=100)
    return TrainConfig.from_dict(base), reasons


@torch.no_grad()
def choose_sampling(model: Hypernet, fit: tuple[torch.Tensor, torch.Tensor],
                    validation: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Set the model's temperature to the best on the validation rows and return the record:
    {"temperature", "guidance", "validation": {choice: {top1, rel_err}}, "ridge": {...},
    "beats_ridge", "statement"}."""
    val_vectors, val_face = validation
    scores = {}
    for temperature in TEMPERATURES:
        model.config = dataclasses.replace(model.config, temperature=temperature)
        for guidance in GUIDANCES:
            latents = sample_latents(model, val_face, seed=0, steps=DEFAULT_STEPS, guidance=guidance)
            result = compare(model.decode_latents(latents), val_vectors, model.layout)
            scores[(temperature, guidance)] = {"top1": result["top1"], "rel_err": result["rel_err"]}
    temperature, guidance = max(scores, key=lambda k: (scores[k]["top1"], -scores[k]["rel_err"]))
    model.config = dataclasses.replace(model.config, temperature=temperature)
    best = scores[(temperature, guidance)]
    ridge = ridge_baseline(fit[0], fit[1], val_vectors, val_face, model.layout)
    ridge = {"top1": ridge["top1"], "rel_err": ridge["rel_err"]}
    beats = (best["top1"], -best["rel_err"]) >= (ridge["top1"], -ridge["rel_err"])
    n = len(val_vectors)  # top-1 moves in steps of 1/n: the counts say how much a difference weighs
    versus = (f"validation top-1 {best['top1']:.3f} ({round(best['top1'] * n)} of {n} identities; delta-W error "
              f"{best['rel_err']:.3f}) against ridge regression's {ridge['top1']:.3f} ({round(ridge['top1'] * n)} of "
              f"{n}; {ridge['rel_err']:.3f})")
    if beats:
        statement = f"the hypernet beats the ridge baseline on the validation identities: {versus}"
    else:
        statement = (f"could not beat the ridge baseline on the validation identities: {versus}. The checkpoint keeps "
                     f"the closest setting (temperature {temperature:g}, guidance {guidance:g}); for this collection "
                     "ridge regression from the face embedding predicts the LoRA better than sampling does")
    return {"temperature": temperature, "guidance": guidance,
            "validation": {f"temperature {t:g}, guidance {g:g}": v for (t, g), v in scores.items()},
            "ridge": ridge, "beats_ridge": beats, "statement": statement}
