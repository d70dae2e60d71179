"""Glyph images of one font: the miniature's "photos" of a typeface.

Placement rule (the same for every font, so that a model conditioned on the character sees
the character where it expects it and the typeface in everything else):

- One scale per font, not per glyph: the font's vertical ink range over the whole character
  set (top of its tallest glyph to bottom of its deepest descender) or its widest glyph,
  whichever is larger, fills the box minus a margin. Relative sizes (x-height against cap
  height, descender depth, width) are the typeface's identity and survive.
- Vertically, every glyph sits on the font's shared baseline, with that ink range centred.
- Horizontally, each glyph's own ink is centred (advance widths and bearings would move
  narrow glyphs off centre for no benefit).

Glyphs are drawn once at a high resolution with FreeType's anti-aliasing and reduced to the
target size by box filtering, so the result does not depend on hinting at tiny sizes.
White ink (255) on black (0).
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont

# The 62 characters every usable font must draw.
DEFAULT_CHARS = string.ascii_uppercase + string.ascii_lowercase + string.digits

# Pixel size of the high-resolution pass: fixed, so that a glyph set at one size is the same
# whichever other sizes are drawn with it (4x the target above 32 px).
_DRAW_PX = 128
# Empty border on each side, as a fraction of the box.
MARGIN = 1 / 16


def load_font(font_path: str | Path, pixel_size: int, index: int = 0) -> ImageFont.FreeTypeFont:
    """Any format FreeType opens (OTF, TTF, PFB, WOFF, WOFF2, TTC by ``index``).

    The BASIC layout engine: no shaping library, so the same glyphs on every machine.
    """
    return ImageFont.truetype(str(font_path), pixel_size, index=index,
                              layout_engine=ImageFont.Layout.BASIC)


def glyph_masks(font: ImageFont.FreeTypeFont, chars: str) -> list[tuple[np.ndarray, int, int]]:
    """Per character: its ink as a uint8 array, and the ink's left and top relative to the
    glyph origin on the baseline (an empty array for a glyph with no ink)."""
    out = []
    for ch in chars:
        mask, (ox, oy) = font.getmask2(ch, mode="L", anchor="ls")
        img = Image.frombytes("L", mask.size, bytes(mask)) if mask.size[0] * mask.size[1] else None
        box = img.getbbox() if img is not None else None
        if box is None:
            out.append((np.zeros((0, 0), np.uint8), 0, 0))
            continue
        x0, y0, x1, y1 = box
        out.append((np.asarray(img.crop(box)), ox + x0, oy + y0))
    return out


def compose(masks: list[tuple[np.ndarray, int, int]], size: int) -> np.ndarray:
    """Place high-resolution glyph masks by the module's rule and reduce them to ``size``.

    Returns uint8 [N, size, size]; an inkless glyph gives an all-black image.
    """
    inked = [(m, left, top) for m, left, top in masks if m.size]
    if not inked:
        return np.zeros((len(masks), size, size), np.uint8)
    top = min(t for _, _, t in inked)
    bottom = max(t + m.shape[0] for m, _, t in inked)
    widest = max(m.shape[1] for m, _, _ in inked)
    extent = max(bottom - top, widest)
    inner = size * (1 - 2 * MARGIN)
    # The high-resolution canvas maps onto the target box exactly.
    canvas_side = max(int(round(extent * size / inner)), extent + 2)
    y_offset = (canvas_side - (bottom - top)) // 2 - top
    out = np.zeros((len(masks), size, size), np.uint8)
    for i, (m, _, t) in enumerate(masks):
        if not m.size:
            continue
        canvas = np.zeros((canvas_side, canvas_side), np.uint8)
        x = (canvas_side - m.shape[1]) // 2
        y = y_offset + t
        canvas[y:y + m.shape[0], x:x + m.shape[1]] = m
        out[i] = np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BOX))
    return out


def render_glyphs(font_path: str | Path, chars: str = DEFAULT_CHARS, size: int = 16,
                  index: int = 0) -> torch.Tensor:
    """uint8 [len(chars), size, size], white glyphs on black, placed by the module's rule."""
    return torch.from_numpy(render_glyph_sizes(font_path, chars, (size,), index)[size])


def render_glyph_sizes(font_path: str | Path, chars: str = DEFAULT_CHARS,
                       sizes: tuple[int, ...] = (16, 32), index: int = 0) -> dict[int, np.ndarray]:
    """The same glyphs at several sizes from one FreeType pass: {size: uint8 [N, size, size]}."""
    font = load_font(font_path, max(_DRAW_PX, 4 * max(sizes)), index)
    masks = glyph_masks(font, chars)
    return {s: compose(masks, s) for s in sizes}
