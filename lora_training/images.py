"""Training photos: read, centre-cropped to a square and resized to the training resolution."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ._hypernet import HypernetError


def load_images(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    """[N, resolution, resolution, 3] floats in 0..1, ComfyUI's IMAGE layout.

    Square crops (DreamBooth's and weights2weights' choice for face photos) keep one latent
    shape for the whole set; EXIF orientation is applied as a photo viewer would.
    """
    if not paths:
        raise HypernetError("no training images given: an identity needs at least one photo")
    return torch.stack([_load(Path(p), resolution) for p in paths])


def _load(path: Path, resolution: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError:
        raise HypernetError(f"training image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HypernetError(f"training image {path} cannot be read as an image ({exc}); remove or replace it") from None
    image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
