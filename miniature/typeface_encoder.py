"""The typeface encoder that plays ArcFace: glyph images of a font in, a unit 512-d identity out.

A sample is a set of glyphs of one font (any number, 32x32 each, white on black): a small CNN
embeds each glyph on its own, the embeddings are averaged over the glyphs that have ink, and a
linear layer maps the average to 512-d (the pack's face embedding size), L2-normalised. A set
identifies a typeface far better than one glyph (an 'l' or an 'i' says little; measured in
benchmarks/RESULTS.md), and averaging makes the order of the glyphs irrelevant.

Trained with the ArcFace loss (additive angular margin, Deng et al. 2019) over the training
families, like ArcFace over identities. For the pack's face path it is exported as an ONNX
recognition model (``onnx_export``): a specimen sheet, a grid of glyphs, plays the aligned face.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GLYPH_SIZE = 32
EMBEDDING_DIM = 512
# A glyph cell with no pixel above this (0..1) is empty and left out of the average.
INK_THRESHOLD = 0.25


class GlyphCNN(nn.Module):
    """One 32x32 glyph -> a feature vector. Strided early, so that a 0.4 M-parameter net costs
    ~4 M multiply-adds per glyph: training at 1 CPU thread stays within minutes."""

    def __init__(self, width: int = 16, features: int = 128):
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),          # 16x16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),  # 8x8
            nn.Conv2d(4 * w, 8 * w, 3, stride=2, padding=1), nn.BatchNorm2d(8 * w), nn.ReLU(),  # 4x4
        )
        # Flattened rather than pooled: where serifs and stroke contrast sit is the style.
        self.fc = nn.Linear(8 * w * 16, features)

    def forward(self, glyphs: torch.Tensor) -> torch.Tensor:   # [M, 1, 32, 32] in 0..1
        return self.fc(self.convs(glyphs).flatten(1))


class TypefaceEncoder(nn.Module):
    def __init__(self, width: int = 16, features: int = 128, dim: int = EMBEDDING_DIM):
        super().__init__()
        self.glyph = GlyphCNN(width, features)
        self.head = nn.Sequential(nn.BatchNorm1d(features), nn.Linear(features, dim))

    def forward(self, glyph_sets: torch.Tensor) -> torch.Tensor:
        """[B, K, 32, 32] in 0..1 (K glyphs per sample, empty cells allowed) -> [B, 512] unit."""
        b, k = glyph_sets.shape[:2]
        per_glyph = self.glyph(glyph_sets.reshape(b * k, 1, GLYPH_SIZE, GLYPH_SIZE)).reshape(b, k, -1)
        inked = (glyph_sets.flatten(2).amax(dim=2) > INK_THRESHOLD).to(per_glyph.dtype)  # [B, K]
        pooled = (per_glyph * inked[..., None]).sum(1) / inked.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(self.head(pooled), dim=1)


class ArcFaceLoss(nn.Module):
    """Additive angular margin: cross-entropy on s * cos(theta + m) for the true class."""

    def __init__(self, classes: int, dim: int = EMBEDDING_DIM, scale: float = 30.0, margin: float = 0.3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = embeddings @ F.normalize(self.weight, dim=1).T
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta.gather(1, labels[:, None]) + self.margin)
        logits = cos.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)
