"""The miniature's "VAE": a lossless pixel fold (space-to-depth) of grey glyph images.

A 16x16 grey glyph becomes a 4x8x8 latent (32x32 -> 4x16x16): each 2x2 pixel block goes into
the four latent channels an SDXL-architecture UNet expects, so nothing is lost and nothing is
learned. Latents are in SDXL VAE units: ComfyUI's SDXL latent format multiplies what a VAE
encodes by 0.13025 before the UNet sees it, so the fold divides by that scale and the UNet
works on pixels in [-1, 1], the range SDXL's noise schedule was made for. The fold also
moves black (the glyphs' background, -1) to 0: sampling starts from noise of mean 0, and
SDXL's schedule (not zero terminal SNR) barely teaches a model to move a whole image's mean,
so with black at -1 the first trained model drew grey, striped backgrounds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# comfy.latent_formats.SDXL.scale_factor; a glyph file records the value it was trained with.
SDXL_LATENT_SCALE = 0.13025
FACTOR = 2  # 2x2 blocks of one grey channel fill SDXL's 4 latent channels
BLACK = -1.0  # the grey value (in [-1, 1]) the fold maps to latent 0


class PixelFold(torch.nn.Module):
    """encode: images [B, C, H, W] in [-1, 1] (their channel mean is the grey value) ->
    latents [B, 4, H/2, W/2]; decode: latents -> grey images [B, 3, H, W] (RGB, equal channels).
    The `encode`/`decode` pair is what comfy.sd.VAE calls on its first-stage model."""

    def __init__(self, latent_scale: float = SDXL_LATENT_SCALE, shift: float = BLACK):
        super().__init__()
        self.latent_scale, self.shift = float(latent_scale), float(shift)

    def encode(self, pixels: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
        grey = pixels.mean(dim=1, keepdim=True)
        return (F.pixel_unshuffle(grey, FACTOR) - self.shift) / self.latent_scale

    def decode(self, latents: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
        grey = F.pixel_shuffle(latents * self.latent_scale + self.shift, FACTOR)
        return grey.expand(-1, 3, -1, -1).contiguous()

    def describe(self) -> dict:
        return {"kind": "pixel_fold", "factor": FACTOR, "latent_scale": self.latent_scale, "shift": self.shift}


def glyphs_to_latents(glyphs: torch.Tensor, latent_scale: float = SDXL_LATENT_SCALE, shift: float = BLACK) -> torch.Tensor:
    """uint8 glyphs [N, S, S] (white ink on black, as miniature.glyphs renders them) -> latents
    [N, 4, S/2, S/2], the same values VAE Encode gives for those glyphs as an IMAGE."""
    pixels = glyphs.float().div(255.0).mul(2.0).sub(1.0).unsqueeze(1)
    return PixelFold(latent_scale, shift).encode(pixels)
