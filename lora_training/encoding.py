"""Images and captions into what the trainer eats: VAE latents and CONDITIONING, by the VAE and
CLIP of the checkpoint, the way VAE Encode and CLIP Text Encode make them."""
from __future__ import annotations

import comfy.utils
import torch

from ._hypernet import HypernetError


def square_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """A ComfyUI IMAGE batch [N, H, W, C] centre-cropped and resized to [N, res, res, 3]."""
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] < 3:
        raise HypernetError(f"reference images must be a non-empty IMAGE batch [N, H, W, 3], not shape {tuple(images.shape)}")
    pixels = images[..., :3].movedim(-1, 1)
    pixels = comfy.utils.common_upscale(pixels, resolution, resolution, "bilinear", "center")
    return pixels.movedim(1, -1).clamp(0.0, 1.0)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> latents [N, C, h, w], one image at a time (memory stays one image's)."""
    return torch.cat([vae.encode(images[i:i + 1, :, :, :3]).float().cpu() for i in range(images.shape[0])])


@torch.no_grad()
def encode_caption(clip, text: str) -> list:
    """CONDITIONING of one caption, as CLIP Text Encode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))
