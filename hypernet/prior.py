"""The conditional denoiser over LoRA latents: a residual MLP with a timestep embedding.

Two ways to feed the identity condition c (an L2-normalised face embedding) into each block:

- `adanorm`: per-channel scale and shift from (time + condition) embedding,
  LN(h) * (1 + scale) + shift, zero-initialised so training starts from the plain MLP.
- `adalora` (LoRA Diffusion's "ADALoRA", as in the first author's public experiments): the
  condition, after LayerNorm and a Linear layer, gives per-sample low-rank factors
  A(c), B(c) in R^{width x r}, rescaled to fixed standard deviations, and the block applies
  h <- h + h A(c) B(c)^T. The timestep, plus a linear embedding of the condition, is added to
  h (ours: without that additive path the prior ignored the face on the synthetic benchmark,
  held-out top-1 0.005 after 4,000 steps, while AdaNorm reached 0.2 after 1,500).

Classifier-free guidance: while training a fraction of conditions is replaced by a learned
null condition; `forward(..., cond=None)` uses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import sinusoid
from .errors import HypernetError

CONDITIONINGS = ("adanorm", "adalora")


@dataclass(frozen=True)
class PriorConfig:
    width: int = 1024
    blocks: int = 4
    conditioning: str = "adalora"
    adalora_rank: int = 4
    time_dim: int = 256
    cond_dropout: float = 0.1

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise HypernetError(f"conditioning must be one of {CONDITIONINGS}, not {self.conditioning!r}")
        if self.width < 2 or self.blocks < 1 or self.adalora_rank < 1 or self.time_dim < 2:
            raise HypernetError("prior width, blocks, adalora_rank and time_dim must be positive")
        if not 0 <= self.cond_dropout < 1:
            raise HypernetError("cond_dropout must be in [0, 1)")


class AdaNormBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(emb_dim, 2 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    @staticmethod
    def prepare(raw: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return embedded  # the modulation depends on the timestep too: nothing to compute ahead

    def forward(self, h: torch.Tensor, time_emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(F.silu(time_emb + cond)).chunk(2, dim=-1)
        x = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(x)))


class AdaLoraBlock(nn.Module):
    # Target standard deviations of A(c) and B(c): with LayerNormed h, h A B^T then has about
    # unit scale per channel, whatever the condition's magnitude.
    def __init__(self, width: int, emb_dim: int, cond_dim: int, rank: int):
        super().__init__()
        self.width, self.rank = width, rank
        self.time = nn.Linear(emb_dim, width)
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.factors = nn.Linear(cond_dim, 2 * width * rank)
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    @staticmethod
    def _rescaled(x: torch.Tensor, target: float) -> torch.Tensor:
        return x / (x.std(dim=(-2, -1), keepdim=True) + 1e-6) * target

    def prepare(self, raw: torch.Tensor, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What forward needs of the condition: A(c), B(c) and the embedded condition."""
        a, b = self.factors(self.cond_norm(raw)).view(-1, 2, self.width, self.rank).unbind(1)
        return self._rescaled(a, self.width ** -0.5), self._rescaled(b, self.rank ** -0.5), embedded

    def forward(self, h: torch.Tensor, time_emb: torch.Tensor,
                cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a, b, embedded = cond
        x = self.norm(h + self.time(F.silu(time_emb + embedded)))
        x = x + ((x.unsqueeze(1) @ a) @ b.transpose(1, 2)).squeeze(1)
        return h + self.fc2(F.silu(self.fc1(x)))


class Denoiser(nn.Module):
    def __init__(self, latent_size: int, cond_dim: int, timesteps: int, cfg: PriorConfig):
        super().__init__()
        self.cfg, self.timesteps = cfg, timesteps
        self.latent_in = nn.Linear(latent_size, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))
        self.cond_proj = nn.Linear(cond_dim, cfg.width)
        if cfg.conditioning == "adanorm":
            self.blocks = nn.ModuleList(AdaNormBlock(cfg.width, cfg.width) for _ in range(cfg.blocks))
        else:
            self.blocks = nn.ModuleList(AdaLoraBlock(cfg.width, cfg.width, cond_dim, cfg.adalora_rank)
                                        for _ in range(cfg.blocks))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.latent_out = nn.Linear(cfg.width, latent_size)
        nn.init.zeros_(self.latent_out.weight)
        nn.init.zeros_(self.latent_out.bias)

    def condition(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The condition rows the blocks see: the null condition where `cond` is None or `drop` is set."""
        null = self.null_cond.expand(batch, -1)
        if cond is None:
            return null
        return torch.where(drop[:, None], null, cond) if drop is not None else cond

    def prepare(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> "PreparedCondition":
        """The parts of a forward pass that depend on the condition only. A sampler computes
        them once and passes them as `cond` at every step (a third of the prior's work at SDXL
        size); the result is bit for bit the same as passing the condition itself."""
        c = self.condition(cond, batch, drop)
        cond_emb = self.cond_proj(c)
        return PreparedCondition(tuple(block.prepare(c, cond_emb) for block in self.blocks))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: "torch.Tensor | PreparedCondition | None",
                drop: torch.Tensor | None = None) -> torch.Tensor:
        prepared = cond if isinstance(cond, PreparedCondition) else self.prepare(cond, x.shape[0], drop)
        # Scale t to [0, 1000) whatever T is, so the sinusoid frequencies suit it.
        time_emb = self.time_mlp(sinusoid(t.float() * (1000.0 / self.timesteps), self.cfg.time_dim))
        h = self.latent_in(x)
        for block, block_cond in zip(self.blocks, prepared.blocks):
            h = block(h, time_emb, block_cond)
        return self.latent_out(F.silu(self.out_norm(h)))


@dataclass(frozen=True)
class PreparedCondition:
    """Per block, what Denoiser.prepare computed from the condition rows."""

    blocks: tuple
