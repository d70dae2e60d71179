"""Reading photos: upright by EXIF, RGB, and never decoded past a pixel budget."""
from __future__ import annotations

import os

import numpy as np

from ..errors import HypernetError

# 64 megapixels (an 8K x 8K photo): far above any reference photo, far below what fills memory.
MAX_PIXELS = 64_000_000


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3], turned upright by its EXIF orientation.

    The size is read from the header before any pixel is decoded, so a small file that claims
    a huge image (a decompression bomb) is refused without allocating it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise HypernetError(f"Image {path} is {width} x {height} pixels, more than the "
                                    f"{max_pixels // 1_000_000} megapixels this pack reads; scale it down first.")
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except HypernetError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        raise HypernetError(f"Cannot read image {path}: {error}. Use a JPEG, PNG or WebP photo.") from error
