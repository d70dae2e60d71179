"""The conditional denoiser over LoRA latents: a residual MLP with a timestep embedding.

Two ways to feed the identity condition c (an L2-normalised face embedding) into each block:

- `adanorm`: per-channel scale and shift from (time + condition) embedding,
  LN(h) * (1 + scale) + shift, zero-initialised so training starts from the plain MLP.
- `adalora` (LoRA Diffusion's "ADALoRA", as in the first author's public experiments): the
  condition gives per-sample low-rank factors A(c), B(c) (lowrank.py), and the block applies
  h <- h + h A(c) B(c)^T. The timestep, plus a linear embedding of the condition, is added to
  h (ours: without that additive path the prior ignored the face on the synthetic benchmark,
  held-out top-1 0.005 after 4,000 steps, while AdaNorm reached 0.2 after 1,500).
  With `adalora_gate` (ours) the low-rank term is multiplied by a per-channel gate that starts
  at zero, h <- h + g * h A(c) B(c)^T, so a fresh block is the plain MLP, as with AdaNorm's
  zero-initialised modulation; without it the term starts as a unit-scale random perturbation.

Classifier-free guidance: while training a fraction of conditions is replaced by a learned
null condition; `forward(..., cond=None)` uses it.

`cond` is the condition vector the blocks see: the face embedding itself for condition
"face", the output of the denoiser's `fusion` module (condition.py) for "global" and
"face+global". The null condition replaces that fused vector (denoiser_base.py).
`PriorConfig.kind` picks this residual MLP ("mlp") or the token transformer of
denoiser_transformer.py ("transformer"); denoisers.build_denoiser builds either.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .denoiser_base import DenoiserBase, zero_init
from .lowrank import LowRankConditioned
from .prior_config import PriorConfig


class AdaNormBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = zero_init(nn.Linear(emb_dim, 2 * width))
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    @staticmethod
    def prepare(raw: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return embedded  # the modulation depends on the timestep too: nothing to compute ahead

    def forward(self, h: torch.Tensor, time_emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(F.silu(time_emb + cond)).chunk(2, dim=-1)
        x = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(x)))


class AdaLoraBlock(LowRankConditioned):
    def __init__(self, width: int, emb_dim: int, cond_dim: int, rank: int, gate: bool = False):
        super().__init__()
        # Registered only when asked for, so ungated checkpoints keep their exact state dict.
        self.gate = nn.Parameter(torch.zeros(width)) if gate else None
        self.time = nn.Linear(emb_dim, width)
        self.add_factor_layers(cond_dim, width, rank)
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def prepare(self, raw: torch.Tensor, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What forward needs of the condition: A(c), B(c) and the embedded condition."""
        return (*self.low_rank_factors(raw), embedded)

    def forward(self, h: torch.Tensor, time_emb: torch.Tensor,
                cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a, b, embedded = cond
        x = self.norm(h + self.time(F.silu(time_emb + embedded)))
        low_rank = ((x.unsqueeze(1) @ a) @ b.transpose(1, 2)).squeeze(1)
        x = x + (low_rank if self.gate is None else self.gate * low_rank)
        return h + self.fc2(F.silu(self.fc1(x)))


@dataclass(frozen=True)
class PreparedCondition:
    """Per block, what Denoiser.prepare computed from the condition rows."""

    blocks: tuple


class Denoiser(DenoiserBase):
    def __init__(self, latent_size: int, cond_dim: int, timesteps: int, cfg: PriorConfig,
                 fusion: nn.Module | None = None):
        super().__init__()
        self.cfg, self.timesteps = cfg, timesteps
        self.latent_in = nn.Linear(latent_size, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))
        self.cond_proj = nn.Linear(cond_dim, cfg.width)
        if cfg.conditioning == "adanorm":
            self.blocks = nn.ModuleList(AdaNormBlock(cfg.width, cfg.width) for _ in range(cfg.blocks))
        else:
            self.blocks = nn.ModuleList(AdaLoraBlock(cfg.width, cfg.width, cond_dim, cfg.adalora_rank, cfg.adalora_gate)
                                        for _ in range(cfg.blocks))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.latent_out = zero_init(nn.Linear(cfg.width, latent_size))
        self.fusion = fusion  # built last: a face-only prior draws the same initial weights as before

    def prepare(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> PreparedCondition:
        """The parts of a forward pass that depend on the condition only. A sampler computes
        them once and passes them as `cond` at every step (a third of the prior's work at SDXL
        size); the result is bit for bit the same as passing the condition itself."""
        c = self.condition(cond, batch, drop)
        cond_emb = self.cond_proj(c)
        return PreparedCondition(tuple(block.prepare(c, cond_emb) for block in self.blocks))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | PreparedCondition | None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        prepared = cond if isinstance(cond, PreparedCondition) else self.prepare(cond, x.shape[0], drop)
        time_emb = self.time_embedding(t)
        h = self.latent_in(x)
        for block, block_cond in zip(self.blocks, prepared.blocks):
            h = block(h, time_emb, block_cond)
        return self.latent_out(F.silu(self.out_norm(h)))
