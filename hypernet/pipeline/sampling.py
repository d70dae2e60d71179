"""Sampling LoRAs from a trained hypernet: the functions the CLI and the ComfyUI nodes share.

Reproducibility: all noise is drawn on the CPU from generators seeded by (seed, row), then
moved to the device, so a seed gives the same starting noise on every machine and row i of a
batch gets the same LoRA as sampling that identity alone.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..common.tensors import all_finite, seeded_generator
from ..errors import HypernetError
from ..lora.weights import LoraWeights
from ..lora.vectorize import unflatten
from ..model.hypernet import DEFAULT_GUIDANCE, Hypernet  # noqa: F401 (re-exported for callers)
from .condition_inputs import condition_inputs

SEED_LIMIT = 2**64
# The defaults of every caller (the Sample LoRA node, `sample` and `evaluate` commands). Guidance
# has none here: a caller that gives none samples with the checkpoint's (HypernetConfig.guidance,
# chosen by `train --config auto`, else DEFAULT_GUIDANCE, 3, which the node's widget starts at).
DEFAULT_STEPS = 25
DEFAULT_ETA = 0.0
GUIDANCE_HELP = "classifier-free guidance (default: the hypernet's own, chosen in training; 3 where it chose none)"


def _start_noise(seed: int, n: int, m: int, device: torch.device, temperature: float = 1.0):
    """(the starting noise [n, m], a function giving each DDIM step's noise), both scaled by the
    checkpoint's temperature: row i draws from its own generators, so it does not depend on the
    other rows."""
    noise = torch.stack([torch.randn(m, generator=seeded_generator(seed, i, "start")) for i in range(n)]).to(device)
    step_generators = [seeded_generator(seed, i, "steps") for i in range(n)]

    def step_noise(_: int) -> torch.Tensor:
        return temperature * torch.stack([torch.randn(m, generator=g) for g in step_generators])

    if temperature != 1.0:  # checkpoints without a temperature sample exactly as before
        noise = temperature * noise

    return noise, step_noise


def _guided_denoiser(prior: torch.nn.Module, cond: torch.Tensor, guidance: float):
    """The denoiser with classifier-free guidance; guidance 0 or 1 needs only one of the two passes."""
    n = cond.shape[0]
    # The condition is the same at every step: its share of the prior's work is done once.
    if guidance == 1.0:
        prepared = prior.prepare(cond, n)
    elif guidance == 0.0:
        prepared = prior.prepare(None, n)
    else:
        prepared = prior.prepare(torch.cat([cond, prior.null_cond.expand(n, -1)]), 2 * n)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance in (0.0, 1.0):
            return prior(x, t, prepared)
        both = prior(torch.cat([x, x]), torch.cat([t, t]), prepared)
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    return denoise


@torch.no_grad()
def sample_latents(model: Hypernet, embeddings, *, seed: int, steps: int = DEFAULT_STEPS,
                   guidance: float | None = None, eta: float = DEFAULT_ETA,
                   callback: Callable[[int], None] | None = None, device: str | torch.device | None = None,
                   global_features=None) -> torch.Tensor:
    """Latents [n, m] for n identities by DDIM with classifier-free guidance.

    `embeddings` are face embeddings and `global_features` global image features, one row per
    identity; the checkpoint's condition says which of the two it needs (condition_inputs).
    guidance 1 samples the conditional prior, 0 the unconditional one, > 1 pushes towards the
    condition; None is the checkpoint's own (`checkpoint_guidance`). `callback(done_steps)` runs after each step (the nodes use it for progress and
    cancel). A checkpoint whose training chose a point sampler (ridge or kernel mean) answers
    without DDIM: seed, steps, guidance and eta then change nothing."""
    guidance = checkpoint_guidance(model, guidance)
    if guidance < 0:
        raise HypernetError(f"guidance must not be negative, not {guidance}")
    device = torch.device(device) if device is not None else model.norm.mean.device
    face, global_ = condition_inputs(model, embeddings, global_features)
    cond = model.condition_vectors(face if face is None else face.to(device),
                                   global_ if global_ is None else global_.to(device))
    latents = model.point_latents(cond)
    if latents is not None:  # a point sampler chosen in training (point_samplers.py): no DDIM, no seed
        if callback is not None:
            callback(steps)
    else:
        latents = _prior_latents(model, cond, seed, steps, guidance, eta, callback, device)
    if not all_finite(latents):
        raise HypernetError("sampling produced NaN or infinite values; try guidance closer to 1")
    return latents


def checkpoint_guidance(model: Hypernet, guidance: float | None) -> float:
    """`guidance`, or where it is None the one the checkpoint carries (chosen in training)."""
    return model.config.guidance if guidance is None else float(guidance)


def _prior_latents(model: Hypernet, cond: torch.Tensor, seed: int, steps: int, guidance: float, eta: float,
                   callback, device: torch.device) -> torch.Tensor:
    noise, step_noise = _start_noise(seed, cond.shape[0], model.latent_size, device, model.config.temperature)
    denoise = _guided_denoiser(model.prior, cond, guidance)
    latents = model.diffusion.ddim_sample(denoise, noise, steps, eta, step_noise, callback)
    offset = model.latent_offset(cond)
    if offset is not None:
        latents = latents + offset
    return latents


@torch.no_grad()
def decode_lora(model: Hypernet, latent: torch.Tensor) -> LoraWeights:
    """One latent [m] or [1, m] -> LoraWeights in the model's layout (alpha = rank)."""
    latent = latent.reshape(-1, model.sample_size) if latent.dim() == 1 else latent
    if latent.shape[0] != 1:
        raise HypernetError(f"decode_lora takes one latent, got {latent.shape[0]}")
    vector = model.decode_samples(latent)[0]
    if not all_finite(vector):
        raise HypernetError("the decoded LoRA contains NaN or infinite values")
    return unflatten(vector, model.layout)


def provenance(hypernet_file: str, hypernet_sha256: str, seed: int, steps: int, guidance: float, eta: float,
               embedding_model: str) -> dict[str, str]:
    """The metadata a sampled LoRA carries, so anyone can tell how to make it again."""
    return {"hypernet_file": hypernet_file, "hypernet_sha256": hypernet_sha256, "seed": str(seed),
            "steps": str(steps), "guidance": str(guidance), "eta": str(eta), "embedding_model": embedding_model}
