"""The miniature's test fonts: fonts-urw-base35 unpacked by scripts/setup.sh (tests never download)."""
from __future__ import annotations

from pathlib import Path

import pytest

from miniature.debian_packages import TEST_PACKAGE, default_cache

URW_OTF = "usr/share/fonts/opentype/urw-base35"
URW_PFB = "usr/share/fonts/X11/Type1"


def urw_root() -> Path:
    name, version = TEST_PACKAGE
    root = default_cache() / "unpacked" / f"{name}_{version}"
    if not root.is_dir():
        pytest.fail(f"{root} is missing: run 'bash scripts/setup.sh' (or 'python -m miniature "
                    f"fetch-test-fonts') once with network access; the font tests need {name} {version}")
    return root


def urw_font(name: str, folder: str = URW_OTF) -> Path:
    return urw_root() / folder / name


# The miniature's pipeline in CI: twelve URW faces play the families (each face one "family",
# which is enough to exercise every stage); three are held out.
URW_TRAIN = ("C059-Roman", "C059-Bold", "NimbusMonoPS-Regular", "NimbusRoman-Regular", "NimbusRoman-Bold",
             "NimbusSans-Regular", "NimbusSans-Bold", "URWBookman-Light", "URWGothic-Book")
URW_HELDOUT = ("P052-Roman", "NimbusSansNarrow-Regular", "URWGothic-Demi")


def write_urw_font_list(path: Path) -> Path:
    """A curated-list file (miniature/data/fonts.tsv's format) of the URW test faces."""
    from hypernet.common.files import sha256_file
    from miniature.font_list import FontEntry, write_list
    name, version = TEST_PACKAGE
    root = urw_root()
    entries = [FontEntry(name, version, f"{URW_OTF}/{face}.otf", 0, sha256_file(root / URW_OTF / f"{face}.otf"),
                         face.replace("-", " "), split)
               for faces, split in ((URW_TRAIN, "train"), (URW_HELDOUT, "heldout")) for face in faces]
    write_list(entries, path)
    return path
