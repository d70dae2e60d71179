"""What both denoisers share: the learned null condition of classifier-free guidance and the
timestep embedding. Subclasses set `null_cond`, `time_mlp`, `cfg` and `timesteps`."""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import sinusoid


class DenoiserBase(nn.Module):
    def condition(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The condition rows the blocks see: the null condition where `cond` is None or `drop` is set."""
        null = self.null_cond.expand(batch, -1)
        if cond is None:
            return null
        return torch.where(drop[:, None], null, cond) if drop is not None else cond

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        # Scale t to [0, 1000) whatever T is, so the sinusoid frequencies suit it.
        return self.time_mlp(sinusoid(t.float() * (1000.0 / self.timesteps), self.cfg.time_dim))


def zero_init(layer: nn.Linear) -> nn.Linear:
    """Output layers start at zero: a fresh denoiser predicts 0, a fresh modulation is the identity."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
