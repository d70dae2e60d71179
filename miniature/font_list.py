"""The curated font list: which Debian font file is which typeface "person", and its split.

``build`` goes from candidate packages to the list (scan, one canonical face per family,
filters, clone removal, split) and reports how many families survive each step; the list is a
small committed text file. ``resolve`` goes back from the list to font files on this machine,
downloading the recorded package versions and refusing any file whose SHA-256 differs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hypernet.common.files import sha256_file, write_text_atomic

from . import font_filters
from .debian_packages import default_cache, fetch_packages
from .errors import FontDataError
from .font_catalog import FontFace, canonical_faces, canonical_rank, face_sha256, scan_package
from .glyphs import DEFAULT_CHARS, compose, glyph_masks, load_font

HEADER = ("package", "version", "path", "index", "sha256", "family", "split")
HELDOUT_PERCENT = 15
# Clones: placed 16 px glyph sets closer than this relative distance (font_filters.duplicates).
CLONE_DISTANCE = 0.2
# Relatives (a sibling design, or another weight named as a family of its own): closer than
# this, they go to the same side of the split, so that held-out means unseen design.
RELATIVE_DISTANCE = 0.45
PACKAGES_FILE = Path(__file__).parent / "data" / "font_packages.txt"
FONT_LIST_FILE = Path(__file__).parent / "data" / "fonts.tsv"


@dataclass(frozen=True)
class FontEntry:
    package: str
    version: str
    path: str
    index: int
    sha256: str
    family: str
    split: str     # "train" or "heldout"


def read_packages(path: Path = PACKAGES_FILE) -> list[tuple[str, str]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(r[0], r[1]) for r in rows]


def split_of(family: str) -> str:
    """By a hash of the family name: stable when other families come or go."""
    bucket = int(hashlib.sha256(family.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def build(packages: list[tuple[str, str]], cache: Path | None = None, log=print) -> tuple[list[FontEntry], dict[str, int]]:
    """The curated entries and the count of families after each step."""
    roots = fetch_packages(packages, cache)
    faces: list[FontFace] = []
    for name, version in packages:
        faces += scan_package(name, version, roots[name])
    counts = {"font faces": len(faces)}
    families, no_upright = canonical_faces(faces)
    counts["families by name"] = len(families) + len(no_upright)
    counts["with an upright face"] = len(families)

    complete, glyphs16, shape_sets, placement_sets = [], [], [], []
    # Most canonical first: a clone group keeps its regular upright member.
    for key, face in sorted(families.items(), key=lambda kv: canonical_rank(kv[1])[:4] + (kv[0],)):
        try:
            # 64 px is plenty for judging a face and halves the time of the renderer's 128 px.
            font = load_font(face.file, 64, face.index)
            missing = font_filters.missing_characters(font, DEFAULT_CHARS)
        except OSError:
            continue
        if missing:
            log(f"missing {missing[:12]!r}: {face.family}")
            continue
        masks = glyph_masks(font, DEFAULT_CHARS)
        complete.append(key)
        glyphs16.append(compose(masks, 16))
        glyphs32 = compose(masks, 32)
        shape_sets.append(font_filters.shapes(glyphs32))
        placement_sets.append(font_filters.placements(glyphs32))
    counts["all 62 characters drawn"] = len(complete)

    mixed_case = [i for i, s in enumerate(shape_sets) if not font_filters.caps_only(s)]
    for i in sorted(set(range(len(complete))) - set(mixed_case)):
        log(f"caps-only: {families[complete[i]].family}")
    counts["not caps-only / small caps / unicase"] = len(mixed_case)
    placement_templates = font_filters.templates(torch.stack([placement_sets[i] for i in mixed_case]))
    shape_templates = font_filters.templates(torch.stack([shape_sets[i] for i in mixed_case]))
    legible = []
    for i in mixed_case:
        score = font_filters.legibility(placement_sets[i], shape_sets[i], placement_templates, shape_templates)
        if score >= font_filters.LEGIBLE_FRACTION:
            legible.append(i)
        else:
            log(f"illegible {score:.2f}: {families[complete[i]].family}")
    counts["legible (no dingbats, symbols)"] = len(legible)

    placed = torch.from_numpy(np.stack([glyphs16[i] for i in legible]).reshape(len(legible), -1)).float() / 255
    keep_of = font_filters.duplicates(placed, CLONE_DISTANCE)
    kept = [j for j, k in enumerate(keep_of) if k == j]
    for j, k in enumerate(keep_of):
        if k != j:
            log(f"clone: {families[complete[legible[j]]].family} = {families[complete[legible[k]]].family}")
    counts["distinct (clones removed)"] = len(kept)

    group_of = font_filters.duplicates(placed[kept], RELATIVE_DISTANCE)
    entries = []
    for j, g in zip(kept, group_of):
        face = families[complete[legible[j]]]
        leader = families[complete[legible[kept[g]]]]
        entries.append(FontEntry(face.package, face.version, face.path, face.index, face_sha256(face),
                                 face.family, split_of(leader.family)))
    counts["train"] = sum(e.split == "train" for e in entries)
    counts["heldout"] = len(entries) - counts["train"]
    return entries, counts


def write_list(entries: list[FontEntry], path: Path = FONT_LIST_FILE) -> None:
    lines = ["\t".join(HEADER)]
    for e in sorted(entries, key=lambda e: (e.family.lower(), e.package, e.path)):
        lines.append("\t".join([e.package, e.version, e.path, str(e.index), e.sha256, e.family, e.split]))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_list(path: Path = FONT_LIST_FILE) -> list[FontEntry]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != HEADER:
        raise FontDataError(f"{path} is not a font list (its first line must be the header {'/'.join(HEADER)})")
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split("\t")
        if len(f) != len(HEADER) or f[6] not in ("train", "heldout"):
            raise FontDataError(f"{path} line {n}: expected {len(HEADER)} tab-separated fields ending in train or heldout")
        entries.append(FontEntry(f[0], f[1], f[2], int(f[3]), f[4], f[5], f[6]))
    return entries


def resolve(entries: list[FontEntry], cache: Path | None = None) -> dict[FontEntry, Path]:
    """Each entry's font file on this machine: packages at the recorded versions, SHA-256 checked."""
    cache = cache or default_cache()
    roots = fetch_packages(sorted({(e.package, e.version) for e in entries}), cache)
    files = {}
    for e in entries:
        file = roots[e.package] / e.path
        if not file.is_file():
            raise FontDataError(f"{e.path} is not in {e.package} {e.version} (font list entry for {e.family}); "
                                f"delete {roots[e.package]} to unpack the package again")
        got = sha256_file(file)
        if got != e.sha256:
            raise FontDataError(f"{e.package} {e.version}: {e.path} has SHA-256 {got[:12]}..., the font list "
                                f"records {e.sha256[:12]}...; refusing a changed font for {e.family} "
                                f"(delete {roots[e.package]} and its .deb to fetch it again)")
        files[e] = file
    return files
