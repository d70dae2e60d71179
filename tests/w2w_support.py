"""weights2weights-format source files for tests and `make demo`, written in exactly that format:
all_weights.pt, one float32 row per identity, each the PEFT state dict flattened key by key in
the sorted order of its keys; weight_dimensions.pt, key -> (torch.Size([numel]), torch.Size(shape))
in that order; identity image folders named "0", "1", ... whose sorted order the rows follow."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from face_models import synthetic_photo
from hypernet.data.w2w import DIMENSIONS_FILE, WEIGHTS_FILE
from hypernet.lora.presets import preset
from hypernet.lora.w2w import w2w_dimensions


def write_w2w_files(folder: Path, rows: torch.Tensor, dimensions) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(rows, folder / WEIGHTS_FILE)
    torch.save({key: (torch.Size([torch.Size(shape).numel()]), torch.Size(shape)) for key, shape in dimensions},
               folder / DIMENSIONS_FILE)
    return folder


def identity_rows(count: int, num_values: int, seed: int = 0) -> torch.Tensor:
    """Rows that depend on the identity (a shared mean plus a per-identity direction), so a prior
    has something to learn; row i's first value is i, so a mix-up is visible."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(num_values, generator=gen) * 0.02
    rows = mean + torch.randn(count, num_values, generator=gen) * 0.01
    rows[:, 0] = torch.arange(count, dtype=torch.float32)
    return rows


def write_w2w_source(root: Path, layout_name: str, identities: int, size: int = 96) -> tuple[Path, Path]:
    """(files folder, images folder): one synthetic photo per identity, whose face the generated
    face models (tests/face_models.py) detect as identity i + 1."""
    images = root / "images"
    side = size * 2 // 3
    for i in range(identities):
        (images / str(i)).mkdir(parents=True, exist_ok=True)
        photo = synthetic_photo(size, size, [(size // 6, size // 6, side, i + 1)], seed=i)
        Image.fromarray(photo).save(images / str(i) / "0.png")
    layout = preset(layout_name)
    files = write_w2w_files(root / "files", identity_rows(identities, layout.num_values), w2w_dimensions(layout))
    return files, images
