"""Which fonts are usable "persons", judged from what they draw.

Every test works on rendered glyphs, not on names or tables, because that is what the
miniature's models see: a font whose 'a' slot draws a capital A is caps-only whatever its
name says. Thresholds were set on named Debian fonts (the measured values are beside them);
the families each filter leaves are counted in miniature/data/README.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
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
# Share of letters recognised by the population's templates (``legibility``). Measured: URW
# Gothic 0.88, Playfair Display and Rosario 0.96, Nimbus Sans 0.85; Cinzel (capitals only) 0.46,
# Z003 (script) 0.19, Standard Symbols PS 0.12, D050000L (dingbats) 0.
LEGIBLE_FRACTION = 0.5


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


def placements(glyphs: np.ndarray) -> torch.Tensor:
    """Placed glyphs (the renderer's box, so height, position on the baseline and width count),
    slightly blurred and halved: float [N, (S/2)**2], zero mean, unit norm. What tells 'n' from
    'h' and 'p' from 'o' once a face's own shapes are allowed to vary."""
    g = torch.from_numpy(np.asarray(glyphs)).float()[:, None] / 255
    g = F.avg_pool2d(F.avg_pool2d(g, 3, 1, 1), 2)
    v = g.flatten(1)
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


def caps_only(glyph_shapes: torch.Tensor, chars: str = DEFAULT_CHARS) -> bool:
    """Caps-only, small-caps and unicase faces: lower-case slots drawing capitals."""
    sims = torch.stack([glyph_shapes[chars.index(c)] @ glyph_shapes[chars.index(c.upper())]
                        for c in _DISTINCT_LOWER])
    return bool((sims > CAPS_ONLY_SIMILARITY).float().mean() >= CAPS_ONLY_FRACTION)


def templates(all_placements: torch.Tensor) -> torch.Tensor:
    """Per character the population's median, [N chars, D], unit norm; from ``placements`` of
    many fonts, [fonts, N, D]."""
    t = all_placements.median(dim=0).values
    t = t - t.mean(dim=1, keepdim=True)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)


def legibility(glyph_placements: torch.Tensor, glyph_shapes: torch.Tensor,
               placement_templates: torch.Tensor, shape_templates: torch.Tensor,
               chars: str = DEFAULT_CHARS) -> float:
    """Share of letters whose nearest template is their own character (or a lookalike), in the
    worse of capitals and lower case; nearness adds the cosine of the placed glyphs and of the
    ink-box shapes (placement alone fails faces with a small x-height, shape alone confuses n/u,
    b/q). Digits do not count: old-style figures sit anywhere.

    Dingbat and symbol fonts that map letters to pictures, and decorative faces too far from
    any ordinary letter, score low; so does a Greek face in Latin slots (Standard Symbols PS:
    its capitals pass as Latin, its lower case does not), and so do capitals-only display faces."""
    nearest = (glyph_placements @ placement_templates.T + glyph_shapes @ shape_templates.T).argmax(dim=1).tolist()
    groups: dict[str, list[bool]] = {"upper": [], "lower": []}
    for ch, j in zip(chars, nearest):
        if not ch.isalpha():
            continue
        guess = chars[j]
        hit = guess == ch or any(ch in s and guess in s for s in _LOOKALIKES)
        groups["upper" if ch.isupper() else "lower"].append(hit)
    return min(sum(hits) / len(hits) for hits in groups.values() if hits)


def duplicates(placed: torch.Tensor, threshold: float) -> list[int]:
    """For fonts in order of preference, [fonts, D] float glyph images in [0, 1]: for each font
    the index of the earlier kept font within ``threshold`` of it, or its own index when it is
    kept. The distance is relative, |x - y| / mean(|x|, |y|): a raw pixel difference would call
    any two hairline faces clones because they have little ink at all. Measured at 16 px:
    TeX Gyre Termes / Nimbus Roman / FreeSerif 0.10-0.12, Hack / DejaVu Sans Mono 0.14,
    Kurier / Iwona 0.17, Liberation Serif / Nimbus Roman 0.35, Nimbus Roman / C059 0.45,
    Lato / Lato Light 0.58, Lato Hairline / Cooper Hewitt Thin 0.81."""
    x = placed.double()
    norms = x.norm(dim=1)
    sq = norms**2
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0).sqrt()
    rel = dist / ((norms[:, None] + norms[None, :]) / 2).clamp_min(1e-9)
    keep_of: list[int] = []
    kept: list[int] = []
    for i in range(len(x)):
        clone = next((k for k in kept if rel[i, k] < threshold), None)
        if clone is None:
            kept.append(i)
            keep_of.append(i)
        else:
            keep_of.append(clone)
    return keep_of
