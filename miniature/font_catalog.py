"""The faces in unpacked font packages, and one canonical face per family.

A family is what FreeType calls the face's family name, with a trailing optical-size number
dropped ("LM Roman 10" and "LM Roman 12" are one typeface, and must not land on both sides of
the train / held-out split). Its canonical face is the upright, regular-weight, normal-width one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

from hypernet.common.files import sha256_file

from .debian_packages import FONT_SUFFIXES

_MAX_COLLECTION_FACES = 64


@dataclass(frozen=True)
class FontFace:
    package: str
    version: str
    path: str          # inside the package, e.g. usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
    index: int         # face index in a collection (TTC/OTC), else 0
    family: str
    style: str
    file: Path         # where it lies in the cache


# Weight, width and slant words that some fonts put into the family name ("Clear Sans Thin",
# "Montserrat-Medium", "Roboto-Condensed-Regular"), and optical sizes ("LM Roman 10").
_STYLE_TAIL = re.compile(
    r"[\s_-]+(\d+(\.\d+)?\s*(pt)?|thin|hairline|extra ?light|ultra ?light|light|regular|medium|semi ?bold|"
    r"demi ?bold|demi|bold|extra ?bold|ultra ?bold|heavy|black|semi ?condensed|condensed|narrow|italic|oblique)$",
    re.I)


def family_key(name: str) -> str:
    """Optical sizes, weight/width/slant words at the end of the name, and case do not make
    another typeface."""
    key = name.strip()
    while True:
        shorter = _STYLE_TAIL.sub("", key).strip()
        if shorter == key or not shorter:
            return key.lower()
        key = shorter


def scan_package(package: str, version: str, root: Path) -> list[FontFace]:
    """Every face FreeType can open under ``root`` (an unpacked package); others are skipped."""
    faces = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(FONT_SUFFIXES)):
        for index in range(_MAX_COLLECTION_FACES):
            try:
                font = ImageFont.truetype(str(file), 32, index=index, layout_engine=ImageFont.Layout.BASIC)
                family, style = font.getname()
            except OSError:
                break
            if not re.search("[A-Za-z]", family or ""):   # a broken name table ("." seen)
                family = file.stem
            faces.append(FontFace(package, version, file.relative_to(root).as_posix(), index,
                                  family, style or "", file))
            if not file.name.lower().endswith((".ttc", ".otc")):
                break
    return faces


_SLANTED = re.compile(r"italic|oblique|slanted|kursiv|inclined|cursive|\bit\b|\bsl\b", re.I)
_NEAR_WEIGHT = re.compile(r"light|demi|semi|medium|\blt\b|\bmd\b", re.I)
_FAR_WEIGHT = re.compile(r"bold|black|heavy|thin|hairline|ultra|extra|fat|\bbd\b", re.I)
_OFF_WIDTH = re.compile(r"condensed|narrow|compressed|expanded|extended|wide|\bcond\b", re.I)
_SMALL_CAPS = re.compile(r"small ?caps|\bsc\b|caps|unicase|titling|initials", re.I)
_FORMAT_ORDER = {".otf": 0, ".ttf": 1, ".ttc": 2, ".otc": 2, ".pfb": 3, ".t1": 3, ".woff2": 4, ".woff": 5}


def is_upright(face: FontFace) -> bool:
    return not _SLANTED.search(face.style) and not _SLANTED.search(face.family)


def canonical_rank(face: FontFace) -> tuple:
    """Smaller is more canonical: upright, then regular weight, normal width, no small caps."""
    style = f"{face.style} {face.family}"   # the family name may carry the weight or width
    return (not is_upright(face), bool(_SMALL_CAPS.search(style)), 2 if _FAR_WEIGHT.search(style) else int(bool(_NEAR_WEIGHT.search(style))),
            bool(_OFF_WIDTH.search(style)), _FORMAT_ORDER.get(Path(face.path).suffix.lower(), 9),
            face.package, face.path, face.index)


def canonical_faces(faces: list[FontFace]) -> tuple[dict[str, FontFace], list[str]]:
    """{family key: canonical face}, and the families dropped for having no upright face."""
    by_family: dict[str, list[FontFace]] = {}
    for face in faces:
        by_family.setdefault(family_key(face.family), []).append(face)
    chosen, no_upright = {}, []
    for key, members in sorted(by_family.items()):
        best = min(members, key=canonical_rank)
        if is_upright(best):
            chosen[key] = best
        else:
            no_upright.append(key)
    return chosen, no_upright


def face_sha256(face: FontFace) -> str:
    return sha256_file(face.file)
