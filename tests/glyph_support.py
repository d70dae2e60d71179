"""Glyph base model test material: glyphs from the font Pillow embeds (no font files needed)
and small glyph model files with random weights, written in the real format."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import ImageFont

import comfy_support
from comfy_support import TINY_SDXL_UNET, build_sdxl_model


def pillow_glyphs(chars: str, size: int = 16) -> torch.Tensor:
    """uint8 [len(chars), size, size] drawn by the miniature's placement rule from Pillow's
    embedded font (Aileron), which every Pillow with FreeType carries."""
    from miniature.glyphs import compose, glyph_masks
    font = ImageFont.load_default(size=4 * 64)
    return torch.from_numpy(compose(glyph_masks(font, chars), size))


def random_glyph_model(path: Path, charset: str = "ABCabc012", seed: int = 0, glyph_size: int = 16) -> Path:
    """A glyph model file with seeded random weights (the tiny SDXL UNet the pack's tests use)."""
    from miniature.base_model import GlyphText
    from miniature.glyph_model_file import GlyphModelFile, save_glyph_model
    from miniature.pixel_fold import BLACK, SDXL_LATENT_SCALE
    model = build_sdxl_model(TINY_SDXL_UNET, seed=seed)
    unet = {k[len("diffusion_model."):]: v for k, v in model.state_dict().items() if k.startswith("diffusion_model.")}
    text = GlyphText(charset, TINY_SDXL_UNET["context_dim"])
    gen = torch.Generator().manual_seed(seed + 1)
    text.context.data = torch.randn(text.context.shape, generator=gen)
    text.pooled.data = torch.randn(text.pooled.shape, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_glyph_model(GlyphModelFile(dict(TINY_SDXL_UNET), unet, text, glyph_size, SDXL_LATENT_SCALE, BLACK), path)
    return path


def trainable_glyph_model(path: Path, charset: str = "ABCabc012", seed: int = 0) -> Path:
    """A glyph model file with the trainable tiny SDXL weights: its drawings respond to a LoRA."""
    import dataclasses
    from miniature.glyph_model_file import load_glyph_model, save_glyph_model
    glyph = load_glyph_model(random_glyph_model(path, charset=charset, seed=seed))
    model = comfy_support.trainable_tiny_sdxl_patcher(seed=seed).model
    unet = {k[len("diffusion_model."):]: v for k, v in model.state_dict().items() if k.startswith("diffusion_model.")}
    save_glyph_model(dataclasses.replace(glyph, unet_state=unet), path)
    return path
