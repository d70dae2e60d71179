"""`python -m hypernet evaluate`: how well a checkpoint does on held-out identities.

Sampled LoRAs are compared with the held-out identities' own LoRAs on delta W (metrics.py),
beside three baselines (the mean training LoRA, the LoRA of the nearest training face, a ridge
regression from the face embedding to the training LoRA, ridge.py) and the ceiling the
autoencoder allows (its reconstruction of the true LoRAs).
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
from ..lora.alignment import align, reference_factors
from ..lora.layout import Layout
from ..model.autoencoder import delta_sq_error
from ..model.condition import needs_face, needs_global
from ..model.hypernet import Hypernet
from .metrics import compare, delta_sq_norms, diversity, mean_baseline
from .ridge import choose_lambda, ridge_predict
from .sampling import DEFAULT_ETA, DEFAULT_STEPS, checkpoint_guidance, sample_latents


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


def delta_rel_err(pred: torch.Tensor, true: torch.Tensor, layout: Layout) -> float:
    """Mean over rows of ||dW_pred - dW_true|| / ||dW_true|| (compare's rel_err, without the Gram matrix)."""
    error = delta_sq_error(pred.double(), true.double(), layout)
    return float((error / delta_sq_norms(true, layout).clamp_min(1e-30)).sqrt().mean())


def ridge_baseline(train_vectors: torch.Tensor, train_emb: torch.Tensor, true: torch.Tensor, emb: torch.Tensor,
                   layout: Layout) -> dict:
    """Ridge regression from the embedding to the training LoRA, its lambda chosen on a
    validation split of the training identities by delta-W error, then refitted on all of them.
    The targets are the factors aligned to one reference (alignment.py): averaging canonical
    factors, whose signs and order jump between neighbours, would average noise."""
    aligned = align(train_vectors, reference_factors(train_vectors, layout), layout)
    train_emb = l2_normalize(train_emb)
    lam, _ = choose_lambda(train_emb, aligned, lambda p, t: delta_rel_err(p, t, layout))
    pred = ridge_predict(train_emb, aligned, emb, lam)
    return {**compare(pred, true, layout), "lambda": lam}


def _baselines(train_vectors: torch.Tensor, train_emb: torch.Tensor, true: torch.Tensor, emb: torch.Tensor,
               layout: Layout) -> dict:
    """What a hypernet must beat: the mean training LoRA, the training LoRA of the nearest face,
    and ridge regression from the face to the LoRA."""
    nearest = train_vectors[(emb @ l2_normalize(train_emb).T).argmax(1)]
    baselines = {"mean": mean_baseline(train_vectors, true, layout),
                 "nearest_embedding": {k: v for k, v in compare(nearest, true, layout).items() if k != "rel_err"}}
    if len(train_vectors) >= 3:  # fewer rows leave nothing to choose lambda on
        baselines["ridge"] = ridge_baseline(train_vectors, train_emb, true, emb, layout)
    return baselines


def _sampled(model: Hypernet, true: torch.Tensor, emb: torch.Tensor, glob: torch.Tensor | None, *, seeds: int,
             steps: int, guidance: float | None, eta: float, progress: bool) -> dict[str, float]:
    """Mean top1, cosine and relative error of LoRAs sampled with seeds 0..seeds-1, and their diversity."""
    samples = []
    face_input = emb if needs_face(model.condition) else None
    for k in tqdm(range(seeds), desc="sampling", disable=not progress, file=sys.stderr):
        latents = sample_latents(model, face_input, seed=k, steps=steps, guidance=guidance, eta=eta,
                                 global_features=glob)
        samples.append(model.decode_samples(latents))
    per_seed = [compare(s, true, model.layout) for s in samples]
    means = {key: sum(m[key] for m in per_seed) / seeds for key in ("top1", "cosine", "rel_err")}
    return {**means, "diversity": diversity(samples, true, model.layout)}


def evaluate(model: Hypernet, dataset: LoraDataset, *, seeds: int = 2, steps: int = DEFAULT_STEPS,
             guidance: float | None = None, eta: float = DEFAULT_ETA, limit: int | None = None,
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
        "settings": {"seeds": seeds, "steps": steps, "guidance": checkpoint_guidance(model, guidance), "eta": eta},
        "seconds": time.perf_counter() - started,
    }
