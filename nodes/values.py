"""The values our custom types carry between nodes (FACE_EMBEDDING, GLOBAL_FEATURES, HYPERNET,
LORA_LATENT, LORA).

Plain frozen records: no math here. Each says where it came from, so that a saved LoRA's
metadata and error messages can name the face model, the hypernet file and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..hypernet.lora.layout import Layout


@dataclass(frozen=True)
class FaceEmbeddingValue:
    """One identity: the normalised mean of the per-photo ArcFace embeddings."""

    embedding: torch.Tensor  # [512], L2-normalised
    per_image: torch.Tensor  # [k, 512], one row per photo that had a face
    model_name: str  # which face model made it; the hypernet must have been trained on the same
    used_images: tuple[int, ...] = ()  # indices (0-based) of the photos that contributed
    skipped_images: tuple[int, ...] = ()


@dataclass(frozen=True)
class GlobalFeaturesValue:
    """Global image features of one identity (DiffLoRA's CLIP image condition): like the face
    embedding, the normalised mean of the per-photo features."""

    features: torch.Tensor  # [G], L2-normalised
    per_image: torch.Tensor  # [k, G], L2-normalised, one row per photo
    encoder: dict  # hypernet.encoders.encoder_info.EncoderInfo.to_dict(): name, dim, fingerprint
    # every open_clip architecture with this image tower (ComfyUI's model carries no name)
    architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class HypernetValue:
    """A loaded hypernet checkpoint, wrapped in a ComfyUI ModelPatcher so ComfyUI can free it."""

    patcher: Any  # comfy.model_patcher.ModelPatcher around the hypernet module
    name: str  # file name in models/lora_hypernets
    sha256: str

    @property
    def hypernet(self):
        return self.patcher.model


@dataclass(frozen=True)
class LoraLatentValue:
    """A sampled latent plus everything needed to make it again bit for bit."""

    latent: torch.Tensor
    seed: int
    steps: int
    guidance: float
    eta: float
    hypernet_name: str
    hypernet_sha256: str
    embedding_model: str


@dataclass(frozen=True)
class LoraValue:
    """The LORA type: kohya-keyed tensors (exactly what Save LoRA writes) and their layout."""

    state_dict: dict[str, torch.Tensor]
    layout: Layout
    metadata: dict[str, str] = field(default_factory=dict)
