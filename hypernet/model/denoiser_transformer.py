"""A transformer denoiser over LoRA latents (DiffLoRA denoises with a transformer; its layer
shapes are not public, so these are ours).

The latent [n, m] is zero-padded to a multiple of `tokens` and cut into `tokens` pieces; each
piece is embedded linearly to `token_width` and gets a learned position embedding. Pre-LN
blocks of multi-head self-attention (torch's scaled_dot_product_attention) and an MLP follow,
then a zero-initialised linear map back to the pieces, so training starts from output 0 like
the MLP denoiser.

The timestep and the condition enter every block the two ways denoiser_mlp.py offers:

- `adanorm`: adaLN-Zero as in DiT: scale, shift and a residual gate for the attention and the
  MLP branch come from (time + condition) embedding; all zero-initialised, so every block
  starts as the identity.
- `adalora`: the time + condition embedding is added to every token, then the LayerNormed
  tokens get h <- h + h A(c) B(c)^T with per-sample low-rank factors made from the raw
  condition (lowrank.py, as in denoiser_mlp.AdaLoraBlock) before attention.

Same interface as denoiser_mlp.Denoiser: `forward(x, t, cond, drop)`, `null_cond`, `condition()`,
and an optional `fusion` module (condition.py) for global-feature conditions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .denoiser_base import DenoiserBase, zero_init
from .lowrank import LowRankConditioned
from .prior_config import PriorConfig


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).view(n, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, tokens, width))


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))


class AdaNormTransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = _mlp(width)
        self.modulation = zero_init(nn.Linear(width, 6 * width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor, raw_cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(emb)).unsqueeze(1).chunk(6, dim=-1)
        h = h + gate1 * self.attn(self.norm1(h) * (1 + scale1) + shift1)
        return h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class AdaLoraTransformerBlock(LowRankConditioned):
    def __init__(self, width: int, heads: int, cond_dim: int, rank: int):
        super().__init__()
        self.time = nn.Linear(width, width)
        self.add_factor_layers(cond_dim, width, rank)
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = _mlp(width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, raw_cond: torch.Tensor) -> torch.Tensor:
        a, b = self.low_rank_factors(raw_cond)
        h = h + self.time(F.silu(emb)).unsqueeze(1)
        x = self.norm1(h)
        x = x + (x @ a) @ b.transpose(1, 2)
        h = h + self.attn(x)
        return h + self.mlp(self.norm2(h))


class TransformerDenoiser(DenoiserBase):
    def __init__(self, latent_size: int, cond_dim: int, timesteps: int, cfg: PriorConfig,
                 fusion: nn.Module | None = None):
        super().__init__()
        self.cfg, self.timesteps, self.latent_size = cfg, timesteps, latent_size
        self.piece = math.ceil(latent_size / cfg.tokens)  # latent values per token
        width = cfg.token_width
        self.latent_in = nn.Linear(self.piece, width)
        self.positions = nn.Parameter(torch.randn(cfg.tokens, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))
        self.cond_proj = nn.Linear(cond_dim, width)
        if cfg.conditioning == "adanorm":
            self.blocks = nn.ModuleList(AdaNormTransformerBlock(width, cfg.heads) for _ in range(cfg.depth))
        else:
            self.blocks = nn.ModuleList(AdaLoraTransformerBlock(width, cfg.heads, cond_dim, cfg.adalora_rank)
                                        for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(width)
        self.latent_out = zero_init(nn.Linear(width, self.piece))
        self.fusion = fusion

    def prepare(self, cond: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The sampler's once-per-sample condition step (see Denoiser.prepare): here only the
        null-condition choice; forward passes these rows through unchanged."""
        return self.condition(cond, batch, drop)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        c = self.condition(cond, n, drop)
        emb = self.time_embedding(t) + self.cond_proj(c)
        pad = self.cfg.tokens * self.piece - self.latent_size
        pieces = F.pad(x, (0, pad)).view(n, self.cfg.tokens, self.piece)
        h = self.latent_in(pieces) + self.positions
        for block in self.blocks:
            h = block(h, emb, c)
        out = self.latent_out(F.silu(self.out_norm(h)))
        return out.reshape(n, -1)[:, :self.latent_size]
