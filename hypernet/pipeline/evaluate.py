"""`python -m hypernet evaluate`: how well a checkpoint does on held-out identities.

Sampled LoRAs are compared with the held-out identities' own LoRAs on delta W (metrics.py),
beside two baselines (the mean training LoRA, the LoRA of the nearest training face) and the
ceiling the autoencoder allows (its reconstruction of the true LoRAs).
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from ..common.tensors import l2_normalize
from ..data.dataset import LoraDataset
from ..encoders.encoder_info import check_encoder
from ..errors import HypernetError
from ..lora.layout import Layout
from ..model.condition import needs_face, needs_global
from ..model.hypernet import Hypernet
from .metrics import compare, diversity, mean_baseline
from .sampling import DEFAULT_ETA, DEFAULT_GUIDANCE, DEFAULT_STEPS, sample_latents


def _check_dataset(model: Hypernet, dataset: LoraDataset) -> None:
    if dataset.layout.fingerprint != model.layout.fingerprint:
        raise HypernetError(f"the dataset's layout {dataset.layout.fingerprint} is not the checkpoint's "
                            f"{model.layout.fingerprint}: evaluate on a dataset built for that layout")
    if dataset.embedding_model != model.embedding_model:
        raise HypernetError(f"the dataset holds '{dataset.embedding_model}' embeddings, the checkpoint needs "
                            f"'{model.embedding_model}'")
    if needs_global(model.condition):
        if dataset.global_encoder is None:
            raise HypernetError(f"the checkpoint is conditioned on '{model.condition}' (global image features of "
                                f"{model.config.global_encoder['name']}), but {dataset.path} has no global features")
        check_encoder(model.config.global_encoder, dataset.global_encoder)


def _baselines(train_vectors: torch.Tensor, train_emb: torch.Tensor, true: torch.Tensor, emb: torch.Tensor,
               layout: Layout) -> dict:
    """What a hypernet must beat: the mean training LoRA, and the training LoRA of the nearest face."""
    nearest = train_vectors[(emb @ l2_normalize(train_emb).T).argmax(1)]
    return {"mean": mean_baseline(train_vectors, true, layout),
            "nearest_embedding": {k: v for k, v in compare(nearest, true, layout).items() if k != "rel_err"}}


def _sampled(model: Hypernet, true: torch.Tensor, emb: torch.Tensor, glob: torch.Tensor | None, *, seeds: int,
             steps: int, guidance: float, eta: float, progress: bool) -> dict[str, float]:
    """Mean top1, cosine and relative error of LoRAs sampled with seeds 0..seeds-1, and their diversity."""
    samples = []
    face_input = emb if needs_face(model.condition) else None
    for k in tqdm(range(seeds), desc="sampling", disable=not progress, file=sys.stderr):
        latents = sample_latents(model, face_input, seed=k, steps=steps, guidance=guidance, eta=eta,
                                 global_features=glob)
        samples.append(model.decode_latents(latents))
    per_seed = [compare(s, true, model.layout) for s in samples]
    means = {key: sum(m[key] for m in per_seed) / seeds for key in ("top1", "cosine", "rel_err")}
    return {**means, "diversity": diversity(samples, true, model.layout)}


def evaluate(model: Hypernet, dataset: LoraDataset, *, seeds: int = 2, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, eta: float = DEFAULT_ETA, limit: int | None = None,
             progress: bool = True) -> dict:
    _check_dataset(model, dataset)
    true, emb, _ = dataset.load("heldout")
    if len(true) == 0:
        raise HypernetError(f"{dataset.path} has no held-out identities; build it with --heldout above 0")
    true, emb = true[:limit], l2_normalize(emb[:limit])
    glob = l2_normalize(dataset.load_global("heldout")[:limit]) if needs_global(model.condition) else None
    train_vectors, train_emb, _ = dataset.load("train")
    started = time.perf_counter()
    recon = compare(model.decode_latents(model.encode_vectors(true)), true, dataset.layout)
    sampled = _sampled(model, true, emb, glob, seeds=seeds, steps=steps, guidance=guidance, eta=eta,
                       progress=progress)
    baselines = _baselines(train_vectors, train_emb, true, emb, dataset.layout)
    return {
        "condition": model.condition,
        "recon": {"rel_err": recon["rel_err"], "cosine": recon["cosine"]},
        "sampled": sampled,
        "baselines": baselines,
        "ceiling": {"top1": recon["top1"], "cosine": recon["cosine"]},
        "count": {"heldout": len(true), "train": len(train_vectors)},
        "settings": {"seeds": seeds, "steps": steps, "guidance": guidance, "eta": eta},
        "seconds": time.perf_counter() - started,
    }
