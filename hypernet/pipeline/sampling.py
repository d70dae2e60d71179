"""Sampling LoRAs from a trained hypernet: the functions the CLI and the ComfyUI nodes share.

Reproducibility: all noise is drawn on the CPU from generators seeded by (seed, row), then
moved to the device, so a seed gives the same starting noise on every machine and row i of a
batch gets the same LoRA as sampling that identity alone.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..model.condition import needs_face, needs_global
from ..common.tensors import all_finite, l2_normalize, seeded_generator
from ..errors import HypernetError
from ..lora.weights import LoraWeights
from ..model.hypernet import Hypernet
from ..lora.vectorize import unflatten

SEED_LIMIT = 2**64


def condition_rows(embeddings, dim: int) -> torch.Tensor:
    """Embeddings as float [n, dim] rows, each L2-normalised; one vector [dim] becomes one row."""
    x = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings).float()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != dim:
        raise HypernetError(f"face embeddings must have {dim} values each, got shape {tuple(x.shape)}: "
                            "was it made by another face model?")
    return l2_normalize(x)


def global_rows(features, dim: int, encoder: dict | None) -> torch.Tensor:
    """Global image features as float [n, dim] rows, each L2-normalised."""
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).float()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != dim:
        name = (encoder or {}).get("name", "?")
        raise HypernetError(f"global image features must have {dim} values each (the hypernet was trained on "
                            f"features of the image encoder '{name}'), got shape {tuple(x.shape)}: were they made "
                            "by another encoder?")
    return l2_normalize(x)


def condition_inputs(model: Hypernet, embeddings, global_features) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(face rows, global rows) for the checkpoint's condition; each None where it takes none.

    An input the checkpoint does not use is an error, not silently ignored: a face embedding
    wired into a hypernet that reads only global features would otherwise change nothing."""
    cfg = model.config
    wants_face, wants_global = needs_face(cfg.condition), needs_global(cfg.condition)
    needs = " and ".join(name for name, wanted in (("a face embedding", wants_face),
                                                  ("global image features", wants_global)) if wanted)
    if wants_face and embeddings is None:
        raise HypernetError(f"this hypernet is conditioned on '{cfg.condition}' and needs {needs}; "
                            "no face embedding was given")
    if wants_global and global_features is None:
        raise HypernetError(f"this hypernet is conditioned on '{cfg.condition}' and needs {needs} (from the image "
                            f"encoder '{cfg.global_encoder['name']}'); no global features were given")
    if not wants_face and embeddings is not None:
        raise HypernetError(f"this hypernet is conditioned on '{cfg.condition}' and needs {needs} only; "
                            "a face embedding was given: remove it")
    if not wants_global and global_features is not None:
        raise HypernetError(f"this hypernet is conditioned on '{cfg.condition}' and needs {needs} only; "
                            "global image features were given: remove them")
    face = condition_rows(embeddings, cfg.embedding_dim) if wants_face else None
    global_ = global_rows(global_features, cfg.global_dim, cfg.global_encoder) if wants_global else None
    if face is not None and global_ is not None and face.shape[0] != global_.shape[0]:
        raise HypernetError(f"{face.shape[0]} face embeddings but {global_.shape[0]} rows of global features: "
                            "give one of each per identity")
    return face, global_


@torch.no_grad()
def sample_latents(model: Hypernet, embeddings, *, seed: int, steps: int = 25, guidance: float = 1.0,
                   eta: float = 0.0, callback: Callable[[int], None] | None = None,
                   device: str | torch.device | None = None, global_features=None) -> torch.Tensor:
    """Latents [n, m] for n identities by DDIM with classifier-free guidance.

    `embeddings` are face embeddings and `global_features` global image features, one row per
    identity; the checkpoint's condition says which of the two it needs (condition_inputs).
    guidance 1 samples the conditional prior, 0 the unconditional one, > 1 pushes towards the
    condition. `callback(done_steps)` runs after each step (the nodes use it for progress and
    cancel)."""
    if guidance < 0:
        raise HypernetError(f"guidance must not be negative, not {guidance}")
    device = torch.device(device) if device is not None else model.norm.mean.device
    face, global_ = condition_inputs(model, embeddings, global_features)
    cond = model.condition_vectors(face if face is None else face.to(device),
                                   global_ if global_ is None else global_.to(device))
    n, m = cond.shape[0], model.latent_size
    noise = torch.stack([torch.randn(m, generator=seeded_generator(seed, i, "start")) for i in range(n)]).to(device)
    step_generators = [seeded_generator(seed, i, "steps") for i in range(n)]

    def step_noise(_: int) -> torch.Tensor:
        return torch.stack([torch.randn(m, generator=g) for g in step_generators])

    prior = model.prior
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

    latents = model.diffusion.ddim_sample(denoise, noise, steps, eta, step_noise, callback)
    if not all_finite(latents):
        raise HypernetError("sampling produced NaN or infinite values; try guidance closer to 1")
    return latents


@torch.no_grad()
def decode_lora(model: Hypernet, latent: torch.Tensor) -> LoraWeights:
    """One latent [m] or [1, m] -> LoraWeights in the model's layout (alpha = rank)."""
    latent = latent.reshape(-1, model.latent_size) if latent.dim() == 1 else latent
    if latent.shape[0] != 1:
        raise HypernetError(f"decode_lora takes one latent, got {latent.shape[0]}")
    vector = model.decode_latents(latent)[0]
    if not all_finite(vector):
        raise HypernetError("the decoded LoRA contains NaN or infinite values")
    return unflatten(vector, model.layout)


def provenance(hypernet_file: str, hypernet_sha256: str, seed: int, steps: int, guidance: float, eta: float,
               embedding_model: str) -> dict[str, str]:
    """The metadata a sampled LoRA carries, so anyone can tell how to make it again."""
    return {"hypernet_file": hypernet_file, "hypernet_sha256": hypernet_sha256, "seed": str(seed),
            "steps": str(steps), "guidance": str(guidance), "eta": str(eta), "embedding_model": embedding_model}
