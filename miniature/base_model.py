"""The glyph base model's parts that need no ComfyUI: its UNet config and its "text side".

The UNet is DESIGN.md's tiny SDXL-architecture UNet (6.5 M parameters, SDXL's blocks and
conditioning), so ComfyUI runs it as an ordinary SDXL model and the pack's `tiny-attn-r4`
layout preset fits it. Instead of CLIP, each character has a learned cross-attention context
(TOKENS x context_dim) and a learned pooled vector (SDXL's 1280-wide CLIP-G pooled output,
which ComfyUI's SDXL model turns into the adm vector together with the size embeddings).
Row 0 of both tables is the empty prompt: training drops the character to it now and then,
so the negative prompt of classifier-free guidance means "some glyph".
"""
from __future__ import annotations

import string

import torch

GLYPH_UNET = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=32,
    num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 1, 1],
    transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
    context_dim=64, num_head_channels=64, adm_in_channels=2816, num_classes="sequential",
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
    use_temporal_attention=False, use_temporal_resblock=False,
)
DEFAULT_CHARSET = string.ascii_uppercase + string.ascii_lowercase + string.digits
TOKENS = 4  # context tokens per character: with one, cross-attention's softmax is a constant
POOLED_DIM = 1280  # SDXL: adm_in_channels 2816 = 1280 pooled + 6 size embeddings of 256


class GlyphModelError(ValueError):
    """A problem with a glyph model file or a prompt, explained for the user in the message."""


class GlyphText(torch.nn.Module):
    """Per-character conditioning tables; `charset[i]` is row i + 1, row 0 the empty prompt."""

    def __init__(self, charset: str, context_dim: int, tokens: int = TOKENS, pooled_dim: int = POOLED_DIM):
        super().__init__()
        self.charset = charset
        self.context = torch.nn.Parameter(torch.zeros(len(charset) + 1, tokens, context_dim))
        self.pooled = torch.nn.Parameter(torch.zeros(len(charset) + 1, pooled_dim))

    def rows(self, chars: str) -> torch.Tensor:
        """Table rows of `chars` (each must be in the charset)."""
        missing = sorted({c for c in chars if c not in self.charset})
        if missing:
            raise GlyphModelError(f"this glyph model has no character {''.join(missing)!r}; it draws only "
                             f"{self.charset!r}")
        return torch.tensor([self.charset.index(c) + 1 for c in chars], dtype=torch.long)

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [N, tokens, context_dim], pooled [N, pooled_dim]) of table rows."""
        return self.context[rows], self.pooled[rows]
