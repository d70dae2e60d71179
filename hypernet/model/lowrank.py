"""ADALoRA's per-sample low-rank factors, shared by the MLP and the transformer blocks.

The condition, after LayerNorm and a Linear layer, gives A(c), B(c) in R^{width x r}, each
rescaled to a fixed standard deviation: with LayerNormed h, h A B^T then has about unit scale
per channel, whatever the condition's magnitude.
"""
from __future__ import annotations

import torch
from torch import nn


def rescaled(x: torch.Tensor, target: float) -> torch.Tensor:
    """x scaled per sample (over its last two dimensions) to standard deviation `target`."""
    return x / (x.std(dim=(-2, -1), keepdim=True) + 1e-6) * target


class LowRankConditioned(nn.Module):
    """Base of the ADALoRA blocks: owns `cond_norm` and `factors` (their state-dict names)."""

    def add_factor_layers(self, cond_dim: int, width: int, rank: int) -> None:
        # Called at the same point of each block's __init__ as before this base existed, so the
        # blocks draw the same initial weights and keep their state-dict order.
        self.width, self.rank = width, rank
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.factors = nn.Linear(cond_dim, 2 * width * rank)

    def low_rank_factors(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition rows [n, cond_dim] -> A(c) [n, width, r], B(c) [n, width, r], rescaled."""
        a, b = self.factors(self.cond_norm(raw)).view(-1, 2, self.width, self.rank).unbind(1)
        return rescaled(a, self.width ** -0.5), rescaled(b, self.rank ** -0.5)
