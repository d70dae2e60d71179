"""Distances between LoRAs, measured on delta W = up @ down per module (concatenated over modules),
so two factorisations of the same update count as equal. Inner products are summed from
rank x rank products per module; no dense delta W is built for the whole set.
"""
from __future__ import annotations

import torch

from ..lora.layout import Layout
from ..lora.vectorize import module_slices
from ..model.autoencoder import delta_sq_error


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


def compare_rows(pred: torch.Tensor, true: torch.Tensor, layout: Layout) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """compare's means, and per row: `hit` (is row i's nearest true row its own?) and `rel_err`,
    for paired tests between two predictors of the same rows."""
    cross = delta_gram(pred, true, layout)
    pred_sq, true_sq = delta_sq_norms(pred, layout), delta_sq_norms(true, layout)
    dist = pred_sq[:, None] + true_sq[None, :] - 2 * cross
    hit = dist.argmin(1) == torch.arange(len(pred))
    cosine = cross.diagonal() / (pred_sq.sqrt() * true_sq.sqrt()).clamp_min(1e-30)
    rel = dist.diagonal().clamp_min(0).sqrt() / true_sq.sqrt().clamp_min(1e-30)
    means = {"top1": float(hit.double().mean()), "cosine": float(cosine.mean()), "rel_err": float(rel.mean())}
    return means, {"hit": hit, "rel_err": rel}


def compare(pred: torch.Tensor, true: torch.Tensor, layout: Layout) -> dict[str, float]:
    """top1 (is row i's nearest true row its own?), mean cosine and relative error, on delta W."""
    return compare_rows(pred, true, layout)[0]


def mean_baseline(train: torch.Tensor, true: torch.Tensor, layout: Layout) -> dict[str, float]:
    """top1 and cosine of predicting the mean training delta W for every held-out row."""
    true_sq = delta_sq_norms(true, layout)
    mean_cross, mean_sq = mean_delta_products(train, true, layout)
    mean_dist = mean_sq + true_sq - 2 * mean_cross
    mean_cos = mean_cross / (mean_sq.sqrt() * true_sq.sqrt())
    # Every row gets the same prediction, so its nearest true row is the same for all: top1 = 1/n at most.
    return {"top1": float((mean_dist.argmin() == torch.arange(len(true))).double().mean()),
            "cosine": float(mean_cos.mean())}


def diversity(samples: list[torch.Tensor], true: torch.Tensor, layout: Layout) -> float:
    """Mean delta-W distance between samples of different seeds, relative to the true LoRA's norm."""
    true_norm = delta_sq_norms(true, layout).sqrt()
    distances = []
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            d = delta_sq_error(samples[i], samples[j], layout).double()
            distances.append((d.clamp_min(0).sqrt() / true_norm).mean())
    return float(sum(distances) / len(distances)) if distances else 0.0
