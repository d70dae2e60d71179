"""The picture of an image evaluation: one row per identity, its reference images first, then
what each method drew for it with the same prompts and seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.images import draw_text, resize_rgb, write_png_atomic

GAP = 6
LABEL_HEIGHT = 14


def _cell(image: np.ndarray, side: int) -> np.ndarray:
    rgb = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    return resize_rgb(rgb, side, side, nearest=max(rgb.shape[:2]) < side)


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
    canvas = np.full((height, width, 3), 128, dtype=np.uint8)
    x = 0
    for group, count in zip(groups, counts):
        canvas = draw_text(canvas, (x + 2, 1), group[: max(1, count * side // 6)])
        x += count * side + GAP
    for r, (identity, references, drawn) in enumerate(rows):
        y = LABEL_HEIGHT + r * (side + GAP)
        x = 0
        for group, count in zip(groups, counts):
            images = references if group == "references" else drawn[group]
            for i, image in enumerate(images[:count]):
                canvas[y:y + side, x + i * side:x + (i + 1) * side] = _cell(image, side)
            x += count * side + GAP
    write_png_atomic(path, canvas)
