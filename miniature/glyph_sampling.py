"""Drawing glyphs with ComfyUI's own sampler outside the graph (the training script's sample
grids, tests): the same comfy.sample.sample call and VAE decode the stock KSampler and VAE
Decode nodes make."""
from __future__ import annotations

import comfy.sample
import torch

from .comfy_glyph import empty_glyph_latent, glyph_conditioning


def draw_glyphs(patcher, vae, text, chars: str, glyph_size: int, seed: int = 0, steps: int = 20,
                cfg: float = 3.0, sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    """IMAGE [len(chars), glyph_size, glyph_size, 3] in [0, 1], one glyph per character."""
    positive, negative = glyph_conditioning(text, chars)
    latent = empty_glyph_latent(len(chars), glyph_size)["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                  seed=seed, disable_pbar=True)
    return vae.decode(samples)


def image_grid(rows: list[torch.Tensor], pad: int = 1) -> torch.Tensor:
    """IMAGE batches (each [N, H, W, 3]) as one picture [rows*(H+pad), N*(W+pad), 3], grey gaps."""
    height, width = rows[0].shape[1:3]
    grid = torch.full((len(rows) * (height + pad), rows[0].shape[0] * (width + pad), 3), 0.5)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            grid[r * (height + pad):r * (height + pad) + height, c * (width + pad):c * (width + pad) + width] = image
    return grid


def glyph_sheet(images: torch.Tensor, columns: int = 0, scale: int = 4) -> torch.Tensor:
    """An IMAGE batch of glyphs [N, H, W, 3] as one IMAGE [1, ...]: `columns` per row (0: all in
    one row), grey gaps, enlarged `scale` times by repeating pixels (16 px glyphs are too small
    to judge, and smoothing would invent shapes the model did not draw)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty IMAGE batch [N, H, W, C], got shape {tuple(images.shape)}")
    columns = columns if columns > 0 else images.shape[0]
    rows = [images[i:i + columns, :, :, :3].float().cpu() for i in range(0, images.shape[0], columns)]
    if rows[-1].shape[0] < columns:  # the last row padded with grey cells
        rows[-1] = torch.cat([rows[-1], torch.full((columns - rows[-1].shape[0], *rows[-1].shape[1:]), 0.5)])
    grid = image_grid(rows)
    return grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)[None]
