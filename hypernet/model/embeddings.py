"""Sinusoidal features of real-valued positions, shared by the autoencoder (chunk positions)
and both denoisers (diffusion timesteps) without either importing the other."""
from __future__ import annotations

import math

import torch


def sinusoid(positions: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[..] positions (any real values) -> [.., dim] sin/cos features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    angles = positions.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
