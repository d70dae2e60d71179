"""The font data steps on fonts-urw-base35 (unpacked by setup): filters on known cases, clone
removal, the curated list's split and its SHA-256 check. No network: the package's .deb and
unpacked files are in the cache already."""
import os
import shutil

import numpy as np
import pytest
import torch

from miniature import font_filters
from miniature.debian_packages import TEST_PACKAGE, default_cache, fetch_package
from miniature.errors import FontDataError
from miniature.font_list import build, read_list, resolve, split_of, write_list
from miniature.glyphs import DEFAULT_CHARS, compose, glyph_masks, load_font, render_glyph_sizes
from font_support import URW_PFB, urw_font, urw_root

# Nimbus Sans Narrow is Nimbus Sans's narrow width, not a family of its own.
EXPECTED_FAMILIES = {"C059", "Nimbus Mono PS", "Nimbus Roman", "Nimbus Sans", "P052", "URW Bookman", "URW Gothic"}


def _shapes(path):
    return font_filters.shapes(render_glyph_sizes(path, sizes=(32,))[32])


def _placements(path):
    return font_filters.placements(render_glyph_sizes(path, sizes=(32,))[32])


@pytest.fixture(scope="module")
def urw_templates():
    """The character templates of the URW faces (the population a build would use)."""
    names = ["C059-Roman.otf", "NimbusRoman-Regular.otf", "NimbusSans-Regular.otf", "P052-Roman.otf",
             "URWGothic-Book.otf", "NimbusMonoPS-Regular.otf", "URWBookman-Light.otf", "D050000L.otf",
             "StandardSymbolsPS.otf"]
    return (font_filters.templates(torch.stack([_placements(urw_font(n)) for n in names])),
            font_filters.templates(torch.stack([_shapes(urw_font(n)) for n in names])))


def _legibility(glyphs, templates):
    return font_filters.legibility(font_filters.placements(glyphs), font_filters.shapes(glyphs), *templates)


def _glyphs(name):
    return render_glyph_sizes(urw_font(name), sizes=(32,))[32]


def test_missing_characters_are_found():
    font = load_font(urw_font("NimbusSans-Regular.otf"), 64)
    assert font_filters.missing_characters(font, DEFAULT_CHARS) == ""
    assert font_filters.missing_characters(font, "A\u4e2dz\u0915") == "\u4e2d\u0915"


def test_caps_only_faces_are_recognised():
    sans = urw_font("NimbusSans-Regular.otf")
    assert not font_filters.caps_only(_shapes(sans))
    # A unicase face: its lower-case slots draw the capitals (at x-height, like small caps).
    font = load_font(sans, 128)
    upper = DEFAULT_CHARS[:26]
    fake = compose(glyph_masks(font, upper + upper + DEFAULT_CHARS[52:]), 32)
    assert font_filters.caps_only(font_filters.shapes(fake))


def test_dingbat_symbol_and_script_fonts_are_illegible(urw_templates):
    for name in ["NimbusSans-Regular.otf", "C059-Roman.otf", "URWGothic-Book.otf", "NimbusMonoPS-Regular.otf"]:
        assert _legibility(_glyphs(name), urw_templates) >= 0.6, name
    for name in ["D050000L.otf", "StandardSymbolsPS.otf", "Z003-MediumItalic.otf"]:
        assert _legibility(_glyphs(name), urw_templates) < font_filters.LEGIBLE_FRACTION, name
    # A cipher face (each slot draws another letter) is not a legible Latin face either.
    scrambled = np.roll(_glyphs("NimbusSans-Regular.otf"), 7, axis=0)
    assert _legibility(scrambled, urw_templates) < font_filters.LEGIBLE_FRACTION


def test_clones_are_found_by_their_glyphs():
    def placed(path):
        return torch.from_numpy(render_glyph_sizes(path, sizes=(16,))[16].reshape(-1)).float() / 255
    roman_otf = placed(urw_font("NimbusRoman-Regular.otf"))
    roman_pfb = placed(urw_font("NimbusRoman-Regular.pfb", URW_PFB))
    c059 = placed(urw_font("C059-Roman.otf"))
    sans = placed(urw_font("NimbusSans-Regular.otf"))
    keep_of = font_filters.duplicates(torch.stack([roman_otf, c059, roman_pfb, sans]), threshold=0.2)
    assert keep_of == [0, 1, 0, 3]


@pytest.fixture(scope="module")
def urw_list():
    urw_root()
    lines = []
    entries, counts = build([TEST_PACKAGE], log=lines.append)
    return entries, counts


def test_build_keeps_the_text_faces_once_each(urw_list):
    entries, counts = urw_list
    assert {e.family for e in entries} == EXPECTED_FAMILIES
    assert counts["families by name"] == 10 and counts["with an upright face"] == 9    # Z003 is italic only
    assert counts["legible (no dingbats, symbols)"] == 7                                 # D050000L, Standard Symbols PS
    paths = {e.family: e.path for e in entries}
    assert paths["Nimbus Sans"].endswith("NimbusSans-Regular.otf")                       # upright, regular, normal width
    assert all(len(e.sha256) == 64 for e in entries)
    assert counts["train"] + counts["heldout"] == len(entries)


def test_split_is_by_family_and_stable(urw_list, tmp_path):
    entries, _ = urw_list
    families = [e.family for e in entries]
    assert len(families) == len(set(families))          # one identity per family: no family on both sides
    assert all(e.split == split_of(e.family) for e in entries)
    write_list(entries, tmp_path / "fonts.tsv")
    assert read_list(tmp_path / "fonts.tsv") == sorted(entries, key=lambda e: (e.family.lower(), e.package, e.path))


def test_committed_list_has_disjoint_splits():
    entries = read_list()
    train = {e.family.lower() for e in entries if e.split == "train"}
    heldout = {e.family.lower() for e in entries if e.split == "heldout"}
    assert train and heldout and not train & heldout
    assert len({(e.package, e.path, e.index) for e in entries}) == len(entries)


@pytest.fixture
def private_cache(tmp_path):
    """A cache holding only the test package's .deb (linked), so unpacking happens offline."""
    name, version = TEST_PACKAGE
    debs = tmp_path / "debs"
    debs.mkdir()
    for deb in (default_cache() / "debs").glob(f"{name}_{version}_*.deb"):
        os.symlink(deb, debs / deb.name)
    if not any(debs.iterdir()):
        pytest.fail(f"{name} {version}'s .deb is not in {default_cache() / 'debs'}: run 'bash scripts/setup.sh'")
    return tmp_path


def test_resolve_checks_sha256_and_refuses_a_changed_font(urw_list, private_cache):
    entries, _ = urw_list
    files = resolve(entries, private_cache)
    assert {f.name for f in files.values()} >= {"NimbusSans-Regular.otf", "C059-Roman.otf"}
    victim = next(e for e in entries if e.family == "Nimbus Sans")
    target = files[victim]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(FontDataError, match=r"NimbusSans-Regular.otf has SHA-256 .*refusing a changed font for Nimbus Sans"):
        resolve(entries, private_cache)


def test_a_version_the_archive_no_longer_has_is_refused(private_cache):
    name, _ = TEST_PACKAGE
    with pytest.raises(FontDataError, match=name):
        fetch_package(name, "0.0-0", private_cache)
    assert not (private_cache / "unpacked" / f"{name}_0.0-0").exists()


def test_style_words_in_family_names_do_not_make_another_family():
    from miniature.font_catalog import family_key
    assert family_key("Clear Sans Thin") == family_key("Clear Sans") == "clear sans"
    assert family_key("Roboto-Condensed-Regular") == family_key("Roboto") == "roboto"
    assert family_key("LM Roman 10") == family_key("LM Roman 12") == "lm roman"
    assert family_key("C059") == "c059" and family_key("Black") == "black"
