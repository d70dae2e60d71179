"""The glyph renderer on real Debian fonts: every glyph drawn, placed by the documented rule."""
import numpy as np
import pytest
import torch

from miniature.glyphs import DEFAULT_CHARS, MARGIN, render_glyph_sizes, render_glyphs
from font_support import URW_PFB, urw_font


def _ink_box(img: np.ndarray):
    rows, cols = np.nonzero(img > 32)
    return rows.min(), rows.max(), cols.min(), cols.max()


@pytest.mark.parametrize("size", [16, 32])
def test_every_glyph_has_ink_and_is_centred(size):
    glyphs = render_glyphs(urw_font("NimbusSans-Regular.otf"), size=size)
    assert glyphs.shape == (62, size, size) and glyphs.dtype == torch.uint8
    g = glyphs.numpy()
    for ch, img in zip(DEFAULT_CHARS, g):
        assert img.max() > 128, f"{ch!r} has no ink"
        _, _, left, right = _ink_box(img)
        assert abs(left - (size - 1 - right)) <= 1, f"{ch!r} not centred horizontally"
    # The font's whole vertical ink range (caps to descenders) is centred, inside the margin.
    top, bottom, _, _ = _ink_box(g.max(axis=0))
    assert abs(top - (size - 1 - bottom)) <= 1
    assert top >= int(size * MARGIN) - 1


def test_shared_baseline_and_relative_sizes_kept():
    g = render_glyphs(urw_font("NimbusSans-Regular.otf"), size=32).numpy()
    bottoms = {ch: _ink_box(g[DEFAULT_CHARS.index(ch)])[1] for ch in "xnHE"}
    tops = {ch: _ink_box(g[DEFAULT_CHARS.index(ch)])[0] for ch in "xnHE"}
    assert max(bottoms.values()) - min(bottoms.values()) <= 1       # one baseline
    assert tops["x"] - tops["H"] >= 4                               # x-height below cap height
    assert _ink_box(g[DEFAULT_CHARS.index("g")])[1] > bottoms["x"] + 2   # descender below it


def test_deterministic_and_formats_agree():
    otf = render_glyph_sizes(urw_font("NimbusRoman-Regular.otf"))
    again = render_glyph_sizes(urw_font("NimbusRoman-Regular.otf"))
    pfb = render_glyph_sizes(urw_font("NimbusRoman-Regular.pfb", URW_PFB))
    for size in (16, 32):
        assert np.array_equal(otf[size], again[size])
        # The same typeface in OpenType and Type 1 renders (nearly) the same.
        assert np.abs(otf[size].astype(int) - pfb[size]).mean() < 3
    assert np.array_equal(render_glyphs(urw_font("NimbusRoman-Regular.otf"), size=16).numpy(), otf[16])


def test_other_characters():
    g = render_glyphs(urw_font("NimbusSans-Regular.otf"), chars="Aa", size=16)
    assert g.shape == (2, 16, 16)
