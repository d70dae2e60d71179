"""Training and measuring the typeface encoder on rendered glyphs of the curated families."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .glyphs import DEFAULT_CHARS, render_glyph_sizes
from .typeface_encoder import GLYPH_SIZE, ArcFaceLoss, TypefaceEncoder


def render_families(fonts: list[tuple], size: int = GLYPH_SIZE) -> torch.Tensor:
    """uint8 [families, 62, size, size] from (path, face index) pairs."""
    return torch.from_numpy(np.stack([render_glyph_sizes(path, DEFAULT_CHARS, (size,), index)[size]
                                      for path, index in fonts]))


def augment(glyphs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float [M, 32, 32] in 0..1, each glyph shifted by up to one pixel and half of them blurred
    the way a 16 px glyph looks once enlarged to 32 px (what the base model draws)."""
    m, h, w = glyphs.shape
    padded = F.pad(glyphs, (1, 1, 1, 1))
    shifts = torch.randint(0, 3, (m, 2), generator=generator)
    out = torch.empty_like(glyphs)
    for dy in range(3):
        for dx in range(3):
            pick = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[pick] = padded[pick, dy:dy + h, dx:dx + w]
    coarse = torch.rand(m, generator=generator) < 0.5
    if coarse.any():
        small = F.avg_pool2d(out[coarse][:, None], 2)
        out[coarse] = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
    return out


def sample_batch(glyphs: torch.Tensor, batch: int, per_sample: int, generator: torch.Generator,
                 chars: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` glyph sets of ``per_sample`` distinct characters (from ``chars``, default all) of
    random families: float [batch, per_sample, 32, 32] and the family labels [batch]."""
    families = torch.randint(0, glyphs.shape[0], (batch,), generator=generator)
    pool = chars if chars is not None else torch.arange(glyphs.shape[1])
    picks = torch.stack([pool[torch.randperm(len(pool), generator=generator)[:per_sample]] for _ in range(batch)])
    sets = glyphs[families[:, None], picks].float() / 255
    return augment(sets.flatten(0, 1), generator).reshape(sets.shape), families


@dataclass
class TrainResult:
    encoder: TypefaceEncoder
    losses: list[float]


def train_encoder(glyphs: torch.Tensor, steps: int, *, batch: int = 64, per_sample: int = 8,
                  lr: float = 3e-3, seed: int = 0,
                  on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """ArcFace-loss training over the families of ``glyphs`` (uint8 [F, 62, 32, 32])."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = TypefaceEncoder()
    loss_fn = ArcFaceLoss(glyphs.shape[0])
    params = list(encoder.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    encoder.train()
    losses = []
    for step in range(steps):
        sets, labels = sample_batch(glyphs, batch, per_sample, generator)
        loss = loss_fn(encoder(sets), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, float(loss))
    encoder.eval()
    return TrainResult(encoder, losses)


@torch.no_grad()
def heldout_verification(encoder: TypefaceEncoder, glyphs: torch.Tensor, per_sample: int,
                         seed: int = 0) -> dict[str, float]:
    """Two disjoint glyph sets per family (characters split in halves at random, the same
    split for every family): top-1 retrieval of each family's second set among all families'
    first sets, mean cosine of same-family and of different-family pairs, and the true-accept
    rate at a 1 % false-accept rate."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(glyphs.shape[1], generator=generator)
    half = glyphs.shape[1] // 2
    a_chars, b_chars = order[:half][:per_sample], order[half:][:per_sample]
    encoder.eval()
    a = encoder(glyphs[:, a_chars].float() / 255)
    b = encoder(glyphs[:, b_chars].float() / 255)
    sims = b @ a.T
    n = len(sims)
    same = sims.diagonal()
    different = sims[~torch.eye(n, dtype=torch.bool)]
    threshold = torch.quantile(different, 0.99)
    return {
        "families": n,
        "glyphs per set": len(a_chars),
        "top-1 retrieval": float((sims.argmax(dim=1) == torch.arange(n)).float().mean()),
        "same-family cosine": float(same.mean()),
        "different-family cosine": float(different.mean()),
        "TAR@FAR=1%": float((same > threshold).float().mean()),
    }
