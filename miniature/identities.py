"""Typefaces as identity folders, the shape every `python -m hypernet` command reads.

One folder per family: its glyphs as grey PNGs at the glyph model's size (the "photos"), each
with a `<image>.txt` caption holding its character (what the glyph model is prompted with), and
`embedding.safetensors`: the typeface encoder's embedding of the glyphs, taken through the
pack's own face path in aligned-crop mode on specimen sheets (`specimen_views`), exactly as
evaluate-images embeds references and drawn glyphs.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hypernet.common.files import save_safetensors_atomic
from hypernet.common.tensors import mean_embedding
from hypernet.data.identity_folders import EMBEDDING_FILE

from .encoder_onnx import specimen_views
from .font_list import FontEntry
from .glyphs import render_glyphs


def folder_name(family: str) -> str:
    """A family name as a portable folder name ("URW Grotesk T" -> "URW-Grotesk-T")."""
    return re.sub(r"[^A-Za-z0-9]+", "-", family).strip("-") or "family"


def write_identity(folder: Path, font: Path, index: int, chars: str, size: int) -> None:
    """The family's glyph images and captions into `folder`, written whole or not at all."""
    glyphs = render_glyphs(font, chars, size, index).numpy()
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Numbered names: "a.png" and "A.png" would be one file on case-insensitive file systems.
    for i, (char, glyph) in enumerate(zip(chars, glyphs)):
        Image.fromarray(glyph).save(partial / f"{i:02d}.png")
        (partial / f"{i:02d}.txt").write_text(char)
    os.replace(partial, folder)


def glyph_images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("L")) for p in sorted(folder.glob("*.png"))]


def write_embedding(folder: Path, embedder) -> None:
    """`embedding.safetensors` [512] of the folder's glyphs (`embedder`: hypernet.encoders.face
    ArcFaceEmbedder in aligned-crop mode on the typeface encoder)."""
    rows = np.stack([embedder.embed_image(sheet) for sheet in specimen_views(glyph_images(folder))])
    save_safetensors_atomic({"embedding": mean_embedding(rows)}, folder / EMBEDDING_FILE,
                            {"embedding_model": embedder.name})


def write_identities(entries: list[FontEntry], files: dict, root: Path, chars: str, size: int, embedder,
                     log=print) -> dict[str, str]:
    """One folder per entry under root/<split>/; folders already complete are kept (resumable).
    Returns {folder name: family}."""
    names: dict[str, str] = {}
    for n, entry in enumerate(sorted(entries, key=lambda e: e.family), 1):
        name = folder_name(entry.family)
        if name in names:
            raise ValueError(f"families {names[name]!r} and {entry.family!r} share the folder name {name}")
        names[name] = entry.family
        folder = root / entry.split / name
        if not folder.is_dir():
            write_identity(folder, files[entry], entry.index, chars, size)
        if not (folder / EMBEDDING_FILE).is_file():
            write_embedding(folder, embedder)
        if n % 100 == 0:
            log(f"  {n}/{len(entries)} identity folders")
    return names


REFERENCE_CHARS = "AaBbEeGgKkMmRr38"  # 16: one specimen sheet, capitals, lower case and figures


def reference_sheet(font: Path, index: int, size: int, chars: str = REFERENCE_CHARS) -> np.ndarray:
    """One specimen sheet (RGB uint8 128x128) of a typeface, its glyphs drawn at the glyph model's
    `size` as the identity folders hold them: the image a user gives Face Embed for this typeface."""
    (sheet,) = specimen_views(list(render_glyphs(font, chars, size, index).numpy()))
    return sheet
