"""Reading photos: upright by EXIF, RGB, and never decoded past a pixel budget.

This is the only place in the library that opens or writes an image file (tests/test_fuzz_images.py
checks that), so the budget holds for every photo the dataset builder and the CLI read.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import HypernetError

# 64 megapixels (an 8K x 8K photo): far above any reference photo, far below what fills memory.
MAX_PIXELS = 64_000_000


def _too_large(path, size: str, max_pixels: int) -> HypernetError:
    return HypernetError(f"Image {path} is {size} pixels, more than the {max_pixels // 1_000_000} megapixels this "
                         "pack reads; scale it down first.")


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3], turned upright by its EXIF orientation.

    The size is read from the header before any pixel is decoded, so a small file that claims
    a huge image (a decompression bomb) is refused without allocating it. PIL's own bomb check
    (a warning from 89 megapixels, an error from 179) is not relied on: the budget is lower."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget decides, below
            image = Image.open(path)  # reads the header only
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise _too_large(path, f"{width} x {height}", max_pixels)
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except HypernetError:
        raise
    except Image.DecompressionBombError as error:  # refused by PIL while reading the header
        raise _too_large(path, "more than 179 million", max_pixels) from error
    except Exception as error:  # noqa: BLE001 - decoders of hostile files raise OSError, EOFError, SyntaxError, struct.error, ...
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise HypernetError(f"Cannot read image {path}: {reason}. Use a JPEG, PNG or WebP photo.") from error


def resize_rgb(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """RGB uint8 HxWx3 resized to height x width (bicubic, or nearest neighbour, which keeps tiny
    glyphs crisp when enlarged); returned as is when already that size."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def draw_text(canvas: np.ndarray, xy: tuple[int, int], text: str, fill=(255, 255, 255)) -> np.ndarray:
    """A copy of an RGB uint8 canvas with `text` drawn at `xy` in PIL's default font."""
    from PIL import Image, ImageDraw
    picture = Image.fromarray(canvas)
    ImageDraw.Draw(picture).text(xy, text, fill=fill)
    return np.array(picture)  # writable, unlike asarray's view of PIL's buffer


def write_png_atomic(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """An RGB uint8 array as a PNG that is whole or absent (temporary file, then rename)."""
    import io
    from PIL import Image
    from .files import write_bytes_atomic
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
