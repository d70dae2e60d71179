"""Ridge regression from condition embeddings to LoRA vectors or latents: the honest baseline a
hypernet must beat (issue 19), and the offset the adaptive prior models its residual around.

A ridge prediction for new rows is a fixed linear combination of the training targets
(pred = mix @ targets, `ridge_mix`), so predicting 100 k-value LoRAs never builds the
E x D coefficient matrix. The regularisation is chosen on a validation split of the TRAINING
rows (`validation_split`), never on the held-out identities it is then scored on.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..common.tensors import seeded_generator
from ..errors import HypernetError

# lambda relative to the largest squared singular value of the centred embeddings: from almost
# no regularisation to almost predicting the mean.
RELATIVE_LAMBDAS = tuple(10.0 ** (k / 2) for k in range(-10, 5))
VALIDATION_FRACTION = 0.1


def validation_split(count: int, seed: int = 0, fraction: float = VALIDATION_FRACTION
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, validation rows) of `count` training rows: a seeded, sorted split with at
    least one validation row and at least two fit rows."""
    if count < 3:
        raise HypernetError(f"{count} training identities are too few for a validation split: need at least 3")
    n_val = min(count - 2, max(1, round(count * fraction)))
    order = torch.randperm(count, generator=seeded_generator(seed, "validation-split"))
    return order[n_val:].sort().values, order[:n_val].sort().values


def centred_svd(x_fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, u, s, vh) of the fit embeddings in float64: every ridge fit here is a shrinkage of
    their centred thin SVD."""
    x = x_fit.double()
    mean = x.mean(0)
    u, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, u, s, vh


def ridge_mix(x_fit: torch.Tensor, x_new: torch.Tensor, lam: float) -> torch.Tensor:
    """[m, n] float64 weights with ridge(x_new) = mix @ y_fit, for any targets y_fit [n, K]
    (an intercept included: x and y are centred on the fit rows)."""
    mean, u, s, vh = centred_svd(x_fit)
    shrink = s / (s.square() + lam)
    coef = ((x_new.double() - mean) @ vh.T) * shrink @ u.T  # [m, n]: weights on the centred targets
    return coef + (1 - coef.sum(1, keepdim=True)) / x_fit.shape[0]


def choose_lambda(x: torch.Tensor, y: torch.Tensor, error: Callable[[torch.Tensor, torch.Tensor], float],
                  seed: int = 0) -> tuple[float, float]:
    """(lambda, its validation error): the grid value whose ridge, fitted on the fit rows of
    `validation_split`, has the lowest `error(pred, true)` on the validation rows."""
    fit, val = validation_split(len(x), seed)
    x_mean, u, s, vh = centred_svd(x[fit])
    scale = float(s[0]) ** 2 if len(s) and s[0] > 0 else 1.0  # the lambda grid's unit
    y_fit = y[fit].double()
    y_mean = y_fit.mean(0)
    # ridge(x) = ((x - x_mean) @ vh.T * shrink(lambda)) @ (u.T @ (y - y_mean)) + y_mean: the targets are
    # projected once for the whole grid (ridge_mix @ y per lambda took 85 s of synth-100k's training)
    projected = u.T @ (y_fit - y_mean)
    del y_fit
    val_coords = (x[val].double() - x_mean) @ vh.T
    scored = []
    for relative in RELATIVE_LAMBDAS:
        lam = relative * scale
        pred = ((val_coords * (s / (s.square() + lam))) @ projected + y_mean).to(y.dtype)
        scored.append((error(pred, y[val]), lam))
    best_error, best_lam = min(scored)
    return best_lam, best_error


def ridge_predict(x_fit: torch.Tensor, y_fit: torch.Tensor, x_new: torch.Tensor, lam: float,
                  chunk: int = 256) -> torch.Tensor:
    """ridge(x_new) [m, K] in y's dtype; the targets are read in row chunks (no float64 copy of y)."""
    mix = ridge_mix(x_fit, x_new, lam)
    out = torch.zeros(x_new.shape[0], y_fit.shape[1], dtype=torch.float64)
    for start in range(0, y_fit.shape[0], chunk):
        out += mix[:, start:start + chunk] @ y_fit[start:start + chunk].double()
    return out.to(y_fit.dtype)


def ridge_linear_map(x_fit: torch.Tensor, y_fit: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [E, K], bias [K]) with ridge(x) = x @ weight + bias: for small targets (latents)
    that a checkpoint stores."""
    x_mean, u, s, vh = centred_svd(x_fit)
    y = y_fit.double()
    y_mean = y.mean(0)
    weight = vh.T @ ((s / (s.square() + lam))[:, None] * (u.T @ (y - y_mean)))
    return weight.float(), (y_mean - x_mean @ weight).float()


def ridge_low_rank(x_fit: torch.Tensor, y_fit: torch.Tensor, lam: float, max_rank: int,
                   chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a [E, r], b [r, K], bias [K]) with ridge(x) ~= (x @ a) @ b + bias, r <= max_rank: the
    ridge map to LoRA-sized targets, which as an E x K matrix would not fit a checkpoint. Exact
    when the map's rank (at most min(n - 1, E)) is within max_rank, else its best rank-r part
    in the Frobenius norm of the coefficients. The targets are read in column chunks."""
    x_mean, u, s, vh = centred_svd(x_fit)
    keep = s > s[0] * 1e-9 if len(s) else s.bool()
    a0 = vh[keep].T * (s[keep] / (s[keep].square() + lam))  # [E, r0]
    u = u[:, keep]
    y_mean = torch.zeros(y_fit.shape[1], dtype=torch.float64)
    b0 = torch.zeros(u.shape[1], y_fit.shape[1], dtype=torch.float64)
    for start in range(0, y_fit.shape[1], chunk):
        block = y_fit[:, start:start + chunk].double()
        y_mean[start:start + chunk] = block.mean(0)
        b0[:, start:start + chunk] = u.T @ (block - block.mean(0))
    if a0.shape[1] > max_rank:  # the coefficients W = a0 b0; their top left singular vectors
        gram = a0 @ (b0 @ b0.T) @ a0.T
        left = torch.linalg.eigh(gram).eigenvectors[:, -max_rank:]  # [E, r]
        a0, b0 = left, (left.T @ a0) @ b0
    bias = y_mean - x_mean @ a0 @ b0
    return a0.float(), b0.float(), bias.float()
