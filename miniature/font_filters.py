"""Which fonts are usable "persons", judged from what they draw.

Every test works on rendered glyphs, not on names or tables, because that is what the
miniature's models see: a font whose 'a' slot draws a capital A is caps-only whatever its
name says. Thresholds were set on the Debian fonts (numbers in miniature/data/README.md).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFont

from .glyphs import DEFAULT_CHARS, glyph_masks

# A code point no font maps (plane 16 private use): what the font draws for a missing character.
_SURELY_MISSING = "\U0010fffd"
# Lower-case letters whose shape differs from their capital's in ordinary typefaces.
_DISTINCT_LOWER = "abdefghnqrt"
# Characters that legible typefaces may draw alike once scaled to the same box.
_LOOKALIKES = [set("0Oo"), set("1lIi|"), set("cC"), set("sS"), set("uU"), set("vV"), set("wW"),
               set("xX"), set("zZ"), set("pP"), set("kK"), set("yY"), set("jJ")]

SHAPE_SIZE = 16
CAPS_ONLY_SIMILARITY = 0.9      # a lower-case glyph this close to its capital is the capital
CAPS_ONLY_FRACTION = 0.5        # ... for at least this share of _DISTINCT_LOWER
LEGIBLE_FRACTION = 0.6          # share of glyphs recognised by the population's templates


def missing_characters(font: ImageFont.FreeTypeFont, chars: str = DEFAULT_CHARS) -> str:
    """Characters the font draws without ink or as its .notdef box."""
    masks = glyph_masks(font, chars + _SURELY_MISSING)
    notdef = masks[-1][0]
    missing = []
    for ch, (mask, _, _) in zip(chars, masks[:-1]):
        if not mask.size or (notdef.size and mask.shape == notdef.shape and np.array_equal(mask, notdef)):
            missing.append(ch)
    return "".join(missing)


def shapes(glyphs: np.ndarray) -> torch.Tensor:
    """Each glyph cropped to its ink and scaled to SHAPE_SIZE square: float [N, SHAPE_SIZE**2],
    zero mean and unit norm, so comparisons ignore placement, size and weight of ink."""
    out = np.zeros((len(glyphs), SHAPE_SIZE, SHAPE_SIZE), np.float32)
    for i, g in enumerate(glyphs):
        box = Image.fromarray(g).getbbox()
        if box is not None:
            out[i] = np.asarray(Image.fromarray(g).crop(box).resize((SHAPE_SIZE, SHAPE_SIZE),
                                                                      Image.Resampling.BILINEAR), np.float32)
    v = torch.from_numpy(out.reshape(len(glyphs), -1))
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


def caps_only(glyph_shapes: torch.Tensor, chars: str = DEFAULT_CHARS) -> bool:
    """Caps-only, small-caps and unicase faces: lower-case slots drawing capitals."""
    sims = torch.stack([glyph_shapes[chars.index(c)] @ glyph_shapes[chars.index(c.upper())]
                        for c in _DISTINCT_LOWER])
    return bool((sims > CAPS_ONLY_SIMILARITY).float().mean() >= CAPS_ONLY_FRACTION)


def templates(all_shapes: torch.Tensor) -> torch.Tensor:
    """Per character the population's median shape, [N chars, D], unit norm; from [fonts, N, D]."""
    t = all_shapes.median(dim=0).values
    t = t - t.mean(dim=1, keepdim=True)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)


def legibility(glyph_shapes: torch.Tensor, character_templates: torch.Tensor,
               chars: str = DEFAULT_CHARS) -> float:
    """Share of glyphs whose nearest template is their own character (or a lookalike).

    Dingbat and symbol fonts that map letters to pictures, and decorative faces too far from
    any ordinary letter, score low."""
    nearest = (glyph_shapes @ character_templates.T).argmax(dim=1).tolist()
    hits = 0
    for ch, j in zip(chars, nearest):
        guess = chars[j]
        hits += guess == ch or any(ch in s and guess in s for s in _LOOKALIKES)
    return hits / len(chars)


def duplicates(placed: torch.Tensor, threshold: float) -> list[int]:
    """For fonts in order of preference, [fonts, D] float glyph images in [0, 1]: for each font
    the index of the earlier kept font it is a clone of (root-mean-square pixel difference under
    ``threshold``), or its own index when it is kept."""
    x = placed.double()
    sq = (x * x).sum(dim=1)
    rms = ((sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0) / x.shape[1]).sqrt()
    keep_of: list[int] = []
    kept: list[int] = []
    for i in range(len(x)):
        clone = next((k for k in kept if rms[i, k] < threshold), None)
        if clone is None:
            kept.append(i)
            keep_of.append(i)
        else:
            keep_of.append(clone)
    return keep_of
