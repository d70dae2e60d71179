"""Drawing with a LoRA and training LoRAs on reference images, all through ComfyUI.

Drawing is what Apply LoRA + KSampler + VAE Decode do in a graph: the LoRA goes onto a clone
of the MODEL by comfy.sd.load_lora_for_models (weights are patched when model management loads
it, never in place), the noise comes from comfy.sample.prepare_noise(latent, seed) and the
sampler is comfy.sample.sample, so one seed gives the same image in ComfyUI's own KSampler.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import comfy.lora
import comfy.model_management
import comfy.sample
import comfy.sd
import numpy as np
import torch

from lora_training.base_models import open_base
from lora_training._hypernet import HypernetError, Layout, LoraWeights, layout_mismatches, lora_to_state_dict
from lora_training.encoding import encode_images
from lora_training.images import load_images
from lora_training.group import GroupMember, train_group

from .settings import DrawSettings


def _unet_shapes(patcher) -> dict[str, tuple[int, ...]]:
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    state = patcher.model.state_dict()
    return {name: tuple(state[key].shape) for name, key in key_map.items() if key in state}


class Renderer:
    """One base model, loaded once; `draw` and `train` may be called for any number of LoRAs."""

    def __init__(self, base: str | os.PathLike, settings: DrawSettings = DrawSettings()):
        self.path = Path(base)
        self.base = open_base(self.path)
        self.kind = self.base.kind
        self.settings = settings
        self._shapes = _unet_shapes(self.base.model)

    def check_captions(self, captions: Sequence[str], what: str = "prompt") -> None:
        for text in captions:
            self.base.check_prompt(text, what)

    def embedding_views(self, images) -> list[np.ndarray]:
        """The images the embedding model sees for a group of images of one identity (uint8 RGB):
        each photo for a checkpoint; specimen sheets of the glyphs for a glyph model."""
        return self.base.embedding_views(images)

    def check_fits(self, lora: LoraWeights, what: str) -> None:
        """A LoRA of another layout (another base model, other shapes) is refused, not half-applied."""
        layout = Layout(tuple(m.describe(name) for name, m in lora.items()))
        problems = layout_mismatches(layout, self._shapes)
        if problems:
            raise HypernetError(f"{what} does not fit the base model {self.path.name}: {'; '.join(problems)}. "
                                "Give LoRAs made for this base model (the layout its hypernet / collection used)")

    def patched(self, lora: LoraWeights | None, what: str = "the LoRA"):
        if lora is None:
            return self.base.model
        self.check_fits(lora, what)
        model, _ = comfy.sd.load_lora_for_models(self.base.model, None, lora_to_state_dict(lora), 1.0, 0.0)
        return model

    @torch.no_grad()
    def draw(self, lora: LoraWeights | None, prompts: Sequence[str], seeds: Sequence[int],
             what: str = "the LoRA") -> np.ndarray:
        """uint8 RGB images [len(seeds) * len(prompts), H, W, 3], seed-major: for each seed, every prompt."""
        model = self.patched(lora, what)
        s = self.settings
        images = []
        for seed in seeds:
            for positive, negative, latent in self.base.batches(prompts, s.resolution):
                comfy.model_management.throw_exception_if_processing_interrupted()
                noise = comfy.sample.prepare_noise(latent, seed)
                samples = comfy.sample.sample(model, noise, s.steps, s.cfg, s.sampler, s.scheduler, positive,
                                              negative, latent, seed=seed, disable_pbar=True)
                image = self.base.vae.decode(samples)
                images.append(image.reshape(-1, *image.shape[-3:])[:, :, :, :3].float().cpu())
        pixels = torch.cat(images).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        return pixels.numpy()

    def train(self, photos: Sequence[Path], captions: Sequence[str], layout: Layout, *, steps: int,
              learning_rate: float, seed: int, init_lora: LoraWeights | None = None, batch_size: int = 1):
        """A LoRA of `layout` trained on the reference images with their captions (lora_training's
        loop on this MODEL, no second copy of it); from `init_lora` when given (Refine)."""
        if len(photos) != len(captions):
            raise HypernetError(f"{len(photos)} reference images but {len(captions)} captions")
        self.check_captions(captions, "caption")
        if init_lora is not None:
            self.check_fits(init_lora, "the LoRA to refine")
        resolution = self.base.training_resolution(self.settings.resolution)
        latents = encode_images(self.base.vae, load_images(list(photos), resolution))
        conditioning = [self.base.conditioning(text)[0] for text in captions]
        # The batched loop (lora_training.group), which trains one identity as the one-image-per-call
        # loop does (tests/test_collect_group.py) at a fraction of its calls: Refine cost about 20 s
        # per typeface there. One loss draw per image: the evaluation scores images, the losses
        # are a by-product.
        (result,) = train_group(self.base.model, [GroupMember(latents, conditioning, seed)], layout, steps=steps,
                                learning_rate=learning_rate, batch_size=batch_size, init_lora=init_lora, eval_draws=1)
        if isinstance(result, HypernetError):
            raise result
        return result
