"""`python -m hypernet evaluate`: how well a checkpoint does on held-out identities.

All distances are measured on delta W = up @ down per module (concatenated over modules), so
two factorisations of the same update count as equal. Inner products are summed from
rank x rank products per module; no dense delta W is built for the whole set.
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from ..model.autoencoder import delta_sq_error
from ..model.condition import needs_face, needs_global
from ..common.tensors import l2_normalize
from ..data.dataset import LoraDataset
from ..errors import HypernetError
from ..encoders.encoder_info import check_encoder
from ..lora.layout import Layout
from ..model.hypernet import Hypernet
from .sampling import sample_latents
from ..lora.vectorize import module_slices


def delta_gram(a: torch.Tensor, b: torch.Tensor, layout: Layout, chunk: int = 64) -> torch.Tensor:
    """[n, m] float64 Frobenius inner products of the delta W of rows of a [n, D] and b [m, D]:
    <Ua Da, Ub Db> = sum((Ua^T Ub) * (Da Db^T)), rank x rank per module and pair."""
    gram = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for s in module_slices(layout):
        ub = b[:, s.start:s.mid].reshape(-1, *s.up_shape).double()
        db = b[:, s.mid:s.stop].reshape(-1, *s.down_shape).double()
        for start in range(0, a.shape[0], chunk):
            rows = a[start:start + chunk]
            ua = rows[:, s.start:s.mid].reshape(-1, *s.up_shape).double()
            da = rows[:, s.mid:s.stop].reshape(-1, *s.down_shape).double()
            ups = torch.einsum("aor,bos->abrs", ua, ub)
            downs = torch.einsum("ari,bsi->abrs", da, db)
            gram[start:start + chunk] += (ups * downs).sum((2, 3))
    return gram


def delta_sq_norms(vectors: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[n] float64 squared norms of each row's delta W."""
    vectors = vectors.double()
    return delta_sq_error(vectors, torch.zeros_like(vectors), layout)


def mean_delta_products(train: torch.Tensor, true: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(<M, dW_b> for each row b of `true`, ||M||^2) for M the dense mean delta W of `train`."""
    cross = torch.zeros(true.shape[0], dtype=torch.float64)
    square = torch.zeros((), dtype=torch.float64)
    for s in module_slices(layout):
        mean = torch.zeros(s.up_shape[0], s.down_shape[1], dtype=torch.float64)
        for rows in train.split(256):
            mean += torch.einsum("nor,nri->oi", rows[:, s.start:s.mid].reshape(-1, *s.up_shape).double(),
                                 rows[:, s.mid:s.stop].reshape(-1, *s.down_shape).double())
        mean /= train.shape[0]
        square += mean.square().sum()
        cross += torch.einsum("oi,bor,bri->b", mean, true[:, s.start:s.mid].reshape(-1, *s.up_shape).double(),
                              true[:, s.mid:s.stop].reshape(-1, *s.down_shape).double())
    return cross, square


def compare(pred: torch.Tensor, true: torch.Tensor, layout: Layout) -> dict[str, float]:
    """top1 (is row i's nearest true row its own?), mean cosine and relative error, on delta W."""
    cross = delta_gram(pred, true, layout)
    pred_sq, true_sq = delta_sq_norms(pred, layout), delta_sq_norms(true, layout)
    dist = pred_sq[:, None] + true_sq[None, :] - 2 * cross
    own = torch.arange(len(pred))
    cosine = cross.diagonal() / (pred_sq.sqrt() * true_sq.sqrt()).clamp_min(1e-30)
    rel = dist.diagonal().clamp_min(0).sqrt() / true_sq.sqrt().clamp_min(1e-30)
    return {"top1": float((dist.argmin(1) == own).double().mean()), "cosine": float(cosine.mean()),
            "rel_err": float(rel.mean())}


def evaluate(model: Hypernet, dataset: LoraDataset, *, seeds: int = 2, steps: int = 25, guidance: float = 1.0,
             eta: float = 0.0, limit: int | None = None, progress: bool = True) -> dict:
    if dataset.layout.fingerprint != model.layout.fingerprint:
        raise HypernetError(f"the dataset's layout {dataset.layout.fingerprint} is not the checkpoint's "
                            f"{model.layout.fingerprint}: evaluate on a dataset built for that layout")
    if dataset.embedding_model != model.embedding_model:
        raise HypernetError(f"the dataset holds '{dataset.embedding_model}' embeddings, the checkpoint needs "
                            f"'{model.embedding_model}'")
    condition = model.condition
    if needs_global(condition):
        if dataset.global_encoder is None:
            raise HypernetError(f"the checkpoint is conditioned on '{condition}' (global image features of "
                                f"{model.config.global_encoder['name']}), but {dataset.path} has no global features")
        check_encoder(model.config.global_encoder, dataset.global_encoder)
    true, emb, _ = dataset.load("heldout")
    if len(true) == 0:
        raise HypernetError(f"{dataset.path} has no held-out identities; build it with --heldout above 0")
    true, emb = true[:limit], l2_normalize(emb[:limit])
    glob = l2_normalize(dataset.load_global("heldout")[:limit]) if needs_global(condition) else None
    train_vectors, train_emb, _ = dataset.load("train")
    started = time.perf_counter()
    layout = dataset.layout
    recon = model.decode_latents(model.encode_vectors(true))
    samples = []
    face_input = emb if needs_face(condition) else None
    for k in tqdm(range(seeds), desc="sampling", disable=not progress, file=sys.stderr):
        latents = sample_latents(model, face_input, seed=k, steps=steps, guidance=guidance, eta=eta,
                                 global_features=glob)
        samples.append(model.decode_latents(latents))
    per_seed = [compare(s, true, layout) for s in samples]
    true_sq = delta_sq_norms(true, layout)
    diversity = []
    for i in range(seeds):
        for j in range(i + 1, seeds):
            d = delta_sq_error(samples[i], samples[j], layout).double()
            diversity.append((d.clamp_min(0).sqrt() / true_sq.sqrt()).mean())
    nearest = train_vectors[(emb @ l2_normalize(train_emb).T).argmax(1)]
    mean_cross, mean_sq = mean_delta_products(train_vectors, true, layout)
    mean_dist = mean_sq + true_sq - 2 * mean_cross
    mean_cos = mean_cross / (mean_sq.sqrt() * true_sq.sqrt())
    # Every row gets the same prediction, so its nearest true row is the same for all: top1 = 1/n at most.
    mean_top1 = float((mean_dist.argmin() == torch.arange(len(true))).double().mean())
    recon_metrics = compare(recon, true, layout)
    return {
        "condition": condition,
        "recon": {"rel_err": recon_metrics["rel_err"], "cosine": recon_metrics["cosine"]},
        "sampled": {"top1": sum(m["top1"] for m in per_seed) / seeds, "cosine": sum(m["cosine"] for m in per_seed) / seeds,
                    "rel_err": sum(m["rel_err"] for m in per_seed) / seeds,
                    "diversity": float(sum(diversity) / len(diversity)) if diversity else 0.0},
        "baselines": {"mean": {"top1": mean_top1, "cosine": float(mean_cos.mean())},
                      "nearest_embedding": {k: v for k, v in compare(nearest, true, layout).items() if k != "rel_err"}},
        "ceiling": {"top1": recon_metrics["top1"], "cosine": recon_metrics["cosine"]},
        "count": {"heldout": len(true), "train": len(train_vectors)},
        "settings": {"seeds": seeds, "steps": steps, "guidance": guidance, "eta": eta},
        "seconds": time.perf_counter() - started,
    }
