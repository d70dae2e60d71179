"""Canonical LoRA factors: one (up, down) pair per weight update, whatever factors made it.

A LoRA update delta W = (alpha/rank) * up @ down has many factorisations: any invertible r x r
mixing of the rank dimension and any alpha give the same update. The hypernetwork must see
equal updates as equal vectors, so each module is re-split by SVD, delta W = U S V^T, into
up = U sqrt(S), down = sqrt(S) V^T with alpha = rank, and a sign rule picks one of the 2^r
sign choices SVD leaves open: the largest-magnitude entry of each column of U is positive.

The SVD never touches the full out x in matrix: with QR of up and down^T, delta W =
Qu (Ru Rd^T) Qd^T, so an r x r SVD suffices (SDXL has 560 modules of up to 1280 x 2048).
"""
from __future__ import annotations

import torch

from .layout import Layout
from .weights import LoraWeights, ModuleWeights


def canonical_factors(up: torch.Tensor, down: torch.Tensor, scale: float = 1.0,
                      rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical (up [out, rank], down [rank, in]) of delta W = scale * up @ down.

    `up` is [out, r] and `down` [r, in] (matrices). `rank` truncates to the largest singular
    values or pads with zeros; by default it is r. Computed in float64, returned in up's dtype.
    """
    target = up.shape[1] if rank is None else int(rank)
    q_up, r_up = torch.linalg.qr(up.double() * scale)
    q_down, r_down = torch.linalg.qr(down.double().T)
    u_small, s, vh_small = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    u = q_up @ u_small
    v = q_down @ vh_small.T
    # Sign rule: flip each (u_i, v_i) pair so the largest-|value| entry of u_i is positive.
    pivot = u.abs().argmax(dim=0)
    signs = torch.sign(u.gather(0, pivot[None]).squeeze(0))
    signs[signs == 0] = 1
    root = s.sqrt() * signs
    new_up = u * root
    new_down = (v * s.sqrt()).T * signs[:, None]
    kept = min(target, s.shape[0])
    out_up = up.new_zeros(up.shape[0], target)
    out_down = up.new_zeros(target, down.shape[1])
    out_up[:, :kept] = new_up[:, :kept]
    out_down[:kept] = new_down[:kept]
    return out_up, out_down


def canonical_module(module: ModuleWeights, rank: int | None = None) -> ModuleWeights:
    """The module in canonical factors at `rank` (default: its own), alpha = rank, conv shapes kept."""
    target = module.rank if rank is None else int(rank)
    up, down = canonical_factors(module.up_matrix(), module.down_matrix(), module.scale, target)
    if module.kind == "conv":
        up = up.reshape(module.out_features, target, 1, 1)
        down = down.reshape(target, *module.down.shape[1:])
    return ModuleWeights(up, down, float(target))


def canonicalize(weights: LoraWeights, layout: Layout | None = None) -> LoraWeights:
    """Every module in canonical factors; at the layout's ranks when a layout is given.

    Modules the layout does not list keep their own rank (vectorize.flatten reports them).
    """
    ranks = {m.name: m.rank for m in layout} if layout is not None else {}
    return LoraWeights({name: canonical_module(m, ranks.get(name)) for name, m in weights.items()}, weights.metadata)
