"""The base model LoRAs are trained on (collect) and drawn with (evaluate-images), in one shape
for both kinds accepted:

* the typeface miniature's glyph model file (its own format: Load Glyph Model's MODEL, the
  pixel-fold VAE, and conditioning from the character tables; a prompt is one character);
* a single-file checkpoint as Load Checkpoint loads it (comfy.sd.load_checkpoint_guess_config:
  MODEL, CLIP, VAE; a prompt is text, the negative prompt empty), SDXL at real scale.
"""
from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management
import comfy.sd
import numpy as np
import torch

from ._hypernet import HypernetError
from .encoding import encode_caption


def load_full_checkpoint(path: Path, what: str):
    """(MODEL, CLIP, VAE) of a single-file checkpoint through ComfyUI's own loader, or a one-line
    HypernetError naming `what` the file was meant to be."""
    try:
        loaded = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    except Exception as exc:  # ComfyUI raises plain RuntimeErrors for files it cannot read
        raise HypernetError(f"{what} {path} cannot be loaded by ComfyUI: {exc}") from exc
    model, clip, vae = loaded[:3]
    if model is None or clip is None or vae is None:
        raise HypernetError(f"{what} {path} lacks a UNet, CLIP or VAE; use a full single-file checkpoint")
    return model, clip, vae


def is_glyph_model(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open
    from miniature.glyph_model_file import FORMAT
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError):
        return False


class GlyphBase:
    kind = "glyph"

    def __init__(self, path: Path):
        from miniature.base_model import GlyphModelError
        from miniature.comfy_glyph import FoldVAE, glyph_model_patcher
        from miniature.glyph_model_file import load_glyph_model
        try:
            glyph = load_glyph_model(path)
            self.model = glyph_model_patcher(glyph, path.name)
        except GlyphModelError as exc:
            raise HypernetError(str(exc)) from None
        self.vae, self.text, self.size = FoldVAE(glyph.fold()), glyph.text, glyph.glyph_size

    def check_prompt(self, prompt: str, what: str) -> None:
        if len(prompt) != 1 or prompt not in self.text.charset:
            raise HypernetError(f"{what} {prompt!r}: a glyph model draws one character per prompt, one of "
                                f"{self.text.charset!r}; for a glyph reference image put its character in the "
                                "<image>.txt caption beside it")

    def conditioning(self, prompt: str) -> tuple[list, list]:
        from miniature.comfy_glyph import glyph_conditioning
        return glyph_conditioning(self.text, prompt)

    def batches(self, prompts, resolution: int):
        """One sampler call draws every prompt, as Glyph Prompt + KSampler do in a graph."""
        from miniature.comfy_glyph import empty_glyph_latent, glyph_conditioning
        positive, negative = glyph_conditioning(self.text, "".join(prompts))
        yield positive, negative, empty_glyph_latent(len(prompts), self.size)["samples"]

    def training_resolution(self, resolution: int) -> int:
        return self.size

    def embedding_views(self, images: np.ndarray) -> list[np.ndarray]:
        """The typeface encoder's "aligned face" is a specimen sheet of up to 16 glyphs (one
        glyph says little about a typeface): miniature.encoder_onnx.specimen_views, the one rule
        for references, drawn glyphs and the collection's identities."""
        from miniature.encoder_onnx import specimen_views
        return specimen_views(images)


class CheckpointBase:
    kind = "checkpoint"

    def __init__(self, path: Path, what: str = "base model"):
        self.model, self.clip, self.vae = load_full_checkpoint(path, what)
        self._empty = None

    def check_prompt(self, prompt: str, what: str) -> None:
        if not prompt.strip():
            raise HypernetError(f"{what} is empty; give a text prompt")

    def conditioning(self, prompt: str) -> tuple[list, list]:
        if self._empty is None:
            self._empty = encode_caption(self.clip, "")
        return encode_caption(self.clip, prompt), self._empty

    def batches(self, prompts, resolution: int):
        """One sampler call per prompt, each from what Empty Latent Image makes (4 channels at
        1/8 of the image side)."""
        for prompt in prompts:
            positive, negative = self.conditioning(prompt)
            yield positive, negative, torch.zeros([1, 4, resolution // 8, resolution // 8],
                                                  device=comfy.model_management.intermediate_device())

    def training_resolution(self, resolution: int) -> int:
        return resolution

    def embedding_views(self, images: np.ndarray) -> list[np.ndarray]:
        return list(images)  # each photo is embedded on its own (the face analyzer finds the face)


def open_base(path: str | os.PathLike, what: str = "base model"):
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"{what} {path} does not exist")
    return GlyphBase(path) if is_glyph_model(path) else CheckpointBase(path, what)
