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
