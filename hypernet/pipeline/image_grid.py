"""The picture of an image evaluation: one row per identity, its reference images first, then
what each method drew for it with the same prompts and seeds."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GAP = 6
LABEL_HEIGHT = 14


def _cell(image: np.ndarray, side: int) -> Image.Image:
    picture = Image.fromarray(np.ascontiguousarray(image[:, :, :3]).astype(np.uint8))
    # Nearest neighbour keeps tiny glyphs crisp when they are enlarged.
    resample = Image.Resampling.NEAREST if max(picture.size) < side else Image.Resampling.LANCZOS
    return picture.resize((side, side), resample)


def write_grid(path: Path, rows: list[tuple[str, list[np.ndarray], dict[str, np.ndarray]]], per_method: int = 4,
               side: int = 64) -> None:
    """`rows`: (identity, reference images, {method: drawn images}); at most `per_method` images of
    each group. Written to a temporary file and renamed, so the PNG is whole or absent."""
    methods = list(rows[0][2]) if rows else []
    groups = ["references"] + methods
    counts = [min(per_method, max(len(r[1]) for r in rows))] + \
        [min(per_method, max(len(r[2][m]) for r in rows)) for m in methods]
    width = sum(c * side + GAP for c in counts)
    height = LABEL_HEIGHT + len(rows) * (side + GAP)
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for group, count in zip(groups, counts):
        draw.text((x + 2, 1), group[: max(1, count * side // 6)], fill=(255, 255, 255))
        x += count * side + GAP
    for r, (identity, references, drawn) in enumerate(rows):
        y = LABEL_HEIGHT + r * (side + GAP)
        x = 0
        for group, count in zip(groups, counts):
            images = references if group == "references" else drawn[group]
            for i, image in enumerate(images[:count]):
                canvas.paste(_cell(image, side), (x + i * side, y))
            x += count * side + GAP
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    os.close(fd)
    try:
        canvas.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
