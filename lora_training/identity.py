"""One base model, loaded once, and one identity LoRA per `train` call, or several per
`train_group` call (the collect stage)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from ._hypernet import HypernetError, Layout, lora_from_state_dict
from .adapters import weight_keys
from .base_models import open_base
from .encoding import encode_images
from .group import GroupMember, train_group
from .images import load_images
from .settings import TrainingResult, TrainingSettings
from .trainer import train_lora


class IdentityTrainer:
    """Trains identity LoRAs restricted to `layout` on a single-file checkpoint or a glyph model
    file (base_models.open_base; a glyph model's captions are single characters).

    The base loads once (a checkpoint through `comfy.sd.load_checkpoint_guess_config`, what Load
    Checkpoint uses); every `train` call clones the MODEL, so identities never see each other's
    LoRA. Call `start_comfyui()` first in a process that is not a ComfyUI server.
    """

    def __init__(self, base_checkpoint: str | os.PathLike, layout: Layout, settings: TrainingSettings = TrainingSettings()):
        path = Path(base_checkpoint)
        if not path.is_file():
            raise HypernetError(f"base checkpoint {path} does not exist")
        self.base = open_base(path, "base checkpoint")
        self.model, self.vae = self.base.model, self.base.vae
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
        latents, conditioning = self.encode(images, captions)
        init = _init(init_lora)
        class_latents, class_conditioning = self._class_images()
        return train_lora(self.model, latents, conditioning, self.layout, steps=settings.steps,
                          learning_rate=settings.learning_rate, seed=seed, batch_size=settings.batch_size,
                          init_lora=init, class_latents=class_latents, class_conditioning=class_conditioning,
                          prior_loss_weight=settings.prior_loss_weight, eval_draws=settings.eval_draws,
                          lr_schedule=settings.lr_schedule, progress=progress, should_stop=should_stop)

    def encode(self, images: Sequence[str | os.PathLike], captions: Sequence[str] | None):
        """One identity's (latents, CONDITIONING per image); HypernetError for its bad input."""
        images = [Path(p) for p in images]
        captions = list(captions or [self.settings.caption()] * len(images))
        if len(captions) != len(images):
            raise HypernetError(f"{len(images)} images but {len(captions)} captions: give one caption per image")
        for text in captions:
            self.base.check_prompt(text, "caption")
        resolution = self.base.training_resolution(self.settings.resolution)
        latents = encode_images(self.vae, load_images(images, resolution))
        return latents, [self.base.conditioning(text)[0] for text in captions]

    def member(self, images: Sequence[str | os.PathLike], captions: Sequence[str] | None, seed: int) -> GroupMember:
        """One identity encoded for `train_group`; HypernetError for its bad input."""
        return GroupMember(*self.encode(images, captions), seed)

    def train_group(self, members: Sequence[GroupMember], init_lora: dict[str, torch.Tensor] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list:
        """Several identities' LoRAs in one batched loop (group.train_group), members from
        `member`: one TrainingResult, or the HypernetError it failed with, per member, in order."""
        if self.settings.class_images:
            raise HypernetError("class images (prior preservation) are not supported with several identities per "
                                "step; train one identity per step")
        settings = self.settings
        return train_group(self.model, members, self.layout, steps=settings.steps,
                           learning_rate=settings.learning_rate, batch_size=settings.batch_size,
                           init_lora=_init(init_lora), eval_draws=settings.eval_draws,
                           lr_schedule=settings.lr_schedule, progress=progress)

    def _class_images(self):
        """Prior-preservation latents and conditioning, encoded once for all identities."""
        if not self.settings.class_images:
            return None, ()
        if self._class_data is None:
            latents = encode_images(self.vae, load_images(self.settings.class_images, self.settings.resolution))
            caption = self.base.conditioning(self.settings.class_caption)[0]
            self._class_data = (latents, [caption] * latents.shape[0])
        return self._class_data


def _init(init_lora: dict[str, torch.Tensor] | None):
    return None if init_lora is None else lora_from_state_dict(init_lora, source="the starting LoRA")
