"""One base checkpoint, loaded once, and one identity LoRA per `train` call (the collect stage)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import comfy.sd
import torch

from ._hypernet import HypernetError, Layout, lora_from_state_dict
from .adapters import weight_keys
from .encoding import encode_caption, encode_images
from .images import load_images
from .settings import TrainingResult, TrainingSettings
from .trainer import train_lora


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


class IdentityTrainer:
    """Trains identity LoRAs restricted to `layout` on a single-file checkpoint.

    The checkpoint goes through `comfy.sd.load_checkpoint_guess_config` (what Load Checkpoint
    uses) once; every `train` call clones the MODEL, so identities never see each other's LoRA.
    Call `start_comfyui()` first in a process that is not a ComfyUI server.
    """

    def __init__(self, base_checkpoint: str | os.PathLike, layout: Layout, settings: TrainingSettings = TrainingSettings()):
        path = Path(base_checkpoint)
        if not path.is_file():
            raise HypernetError(f"base checkpoint {path} does not exist")
        self.model, self.clip, self.vae = load_full_checkpoint(path, "base checkpoint")
        weight_keys(self.model, layout)  # refuses a layout of another base model now, not per identity
        self.checkpoint, self.layout, self.settings = path, layout, settings
        self._class_data = None

    def train(self, images: Sequence[str | os.PathLike], captions: Sequence[str] | None, seed: int | None = None,
              init_lora: dict[str, torch.Tensor] | None = None, progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> TrainingResult:
        """One LoRA from one identity's photos. `captions` has one caption per image, or is
        empty/None for the settings' caption template; `init_lora` (kohya tensors of this
        layout) is the start instead of a fresh LoRA; `seed` None is the settings' seed. Bad input
        raises HypernetError."""
        settings = self.settings
        seed = settings.seed if seed is None else seed
        images = [Path(p) for p in images]
        captions = list(captions or [settings.caption()] * len(images))
        if len(captions) != len(images):
            raise HypernetError(f"{len(images)} images but {len(captions)} captions: give one caption per image")
        init = None if init_lora is None else lora_from_state_dict(init_lora, source="the starting LoRA")
        latents = encode_images(self.vae, load_images(images, settings.resolution))
        conditioning = [encode_caption(self.clip, text) for text in captions]
        class_latents, class_conditioning = self._class_images()
        return train_lora(self.model, latents, conditioning, self.layout, steps=settings.steps,
                          learning_rate=settings.learning_rate, seed=seed, batch_size=settings.batch_size,
                          init_lora=init, class_latents=class_latents, class_conditioning=class_conditioning,
                          prior_loss_weight=settings.prior_loss_weight, eval_draws=settings.eval_draws,
                          progress=progress, should_stop=should_stop)

    def _class_images(self):
        """Prior-preservation latents and conditioning, encoded once for all identities."""
        if not self.settings.class_images:
            return None, ()
        if self._class_data is None:
            latents = encode_images(self.vae, load_images(self.settings.class_images, self.settings.resolution))
            caption = encode_caption(self.clip, self.settings.class_caption)
            self._class_data = (latents, [caption] * latents.shape[0])
        return self._class_data
