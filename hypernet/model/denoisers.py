"""`build_denoiser`: the prior that `PriorConfig.kind` asks for."""
from __future__ import annotations

from torch import nn

from .denoiser_mlp import Denoiser
from .denoiser_transformer import TransformerDenoiser
from .prior_config import PriorConfig


def build_denoiser(latent_size: int, cond_dim: int, timesteps: int, cfg: PriorConfig,
                   fusion: nn.Module | None = None) -> nn.Module:
    """Both kinds share `forward(x, t, cond, drop)`, `prepare`, `condition` and `null_cond`."""
    kind = TransformerDenoiser if cfg.kind == "transformer" else Denoiser
    return kind(latent_size, cond_dim, timesteps, cfg, fusion)
