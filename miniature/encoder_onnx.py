"""The typeface encoder as an insightface recognition model, for the pack's face path.

insightface routes an ONNX file to its ArcFace recogniser when the input is square, at least
112 px and a multiple of 16, and feeds it ``(RGB pixel - 127.5) / 127.5`` (the graph starts with
no Sub/Mul node, which would mean an mxnet model that normalises itself). So the exported graph
takes [N, 3, 128, 128]: a **specimen sheet**, a 4x4 grid of 32 px glyph cells (row-major, empty
cells black and ignored), the typeface's "aligned face". Output: [N, 512], unit length.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hypernet.common.files import write_bytes_atomic

from .typeface_encoder import GLYPH_SIZE, TypefaceEncoder

GRID = 4
SHEET_SIZE = GRID * GLYPH_SIZE    # 128
RECOGNIZER_FILE = "typeface_arcface.onnx"


def specimen_sheet(glyphs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Up to 16 glyphs (uint8 [K, 32, 32], white on black) as an RGB uint8 [128, 128, 3] image."""
    glyphs = np.asarray(glyphs)
    if glyphs.ndim != 3 or glyphs.shape[1:] != (GLYPH_SIZE, GLYPH_SIZE) or not 1 <= len(glyphs) <= GRID * GRID:
        raise ValueError(f"a specimen sheet holds 1 to {GRID * GRID} glyphs of {GLYPH_SIZE}x{GLYPH_SIZE}, "
                         f"got shape {glyphs.shape}")
    sheet = np.zeros((SHEET_SIZE, SHEET_SIZE), np.uint8)
    for i, g in enumerate(glyphs):
        r, c = divmod(i, GRID)
        sheet[r * GLYPH_SIZE:(r + 1) * GLYPH_SIZE, c * GLYPH_SIZE:(c + 1) * GLYPH_SIZE] = g
    return np.repeat(sheet[:, :, None], 3, axis=2)


def specimen_views(images) -> list[np.ndarray]:
    """The sheets the encoder sees for a group of glyph images of one typeface (uint8, grey or
    RGB, any one size): each glyph scaled to a sheet cell, consecutive glyphs filling one sheet
    after another. The one rule for references, drawn glyphs and training identities alike,
    so their embeddings compare like with like."""
    from PIL import Image
    cells = []
    for image in images:
        grey = np.asarray(image)
        grey = grey[:, :, :3].mean(axis=2) if grey.ndim == 3 else grey
        cells.append(np.asarray(Image.fromarray(grey.round().astype(np.uint8))
                                .resize((GLYPH_SIZE, GLYPH_SIZE), Image.Resampling.BILINEAR)))
    per_sheet = GRID * GRID
    return [specimen_sheet(np.stack(cells[i:i + per_sheet])) for i in range(0, len(cells), per_sheet)]


class SheetRecognizer(nn.Module):
    """[N, 3, 128, 128] normalised as insightface does -> [N, 512] unit embeddings."""

    def __init__(self, encoder: TypefaceEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1) * 0.5 + 0.5                                  # back to 0..1
        n = grey.shape[0]
        cells = grey.reshape(n, GRID, GLYPH_SIZE, GRID, GLYPH_SIZE).permute(0, 1, 3, 2, 4)
        return self.encoder(cells.reshape(n, GRID * GRID, GLYPH_SIZE, GLYPH_SIZE))


def sheet_input(sheets_rgb: np.ndarray) -> torch.Tensor:
    """What insightface feeds the recogniser for RGB uint8 sheets [N, 128, 128, 3]."""
    x = torch.from_numpy(np.ascontiguousarray(sheets_rgb)).float().permute(0, 3, 1, 2)
    return (x - 127.5) / 127.5


def export_recognizer(encoder: TypefaceEncoder, folder: str | Path) -> Path:
    """Write ``folder/typeface_arcface.onnx`` (atomically); the folder then loads as a face
    analyzer without detection."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = SheetRecognizer(encoder).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter: the newer one needs onnxscript, which nothing else here uses.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, SHEET_SIZE, SHEET_SIZE),), buffer, dynamo=False,
                          input_names=["input.1"], output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "N"}, "embedding": {0: "N"}}, opset_version=17)
    path = folder / RECOGNIZER_FILE
    write_bytes_atomic(path, buffer.getvalue())
    return path
