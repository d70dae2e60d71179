"""The values our custom socket types carry between nodes, and the type names.

Every type name carries the pack's prefix (LORA_HYPERNET_...): a plain `LORA`, `HYPERNET` or
`FACE_EMBEDDING` is also another pack's type, and ComfyUI's editor lets a user wire any two
sockets with the same type name together. A value of another kind that arrives anyway (an old
workflow, a pack using the same name) gets a message from `expect`, not an AttributeError.

Plain frozen records: no math here. Each says where it came from, so that a saved LoRA's
metadata and error messages can name the face model, the hypernet file and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..hypernet.errors import HypernetError
from ..hypernet.lora.layout import Layout

PREFIX = "LORA_HYPERNET_"
FACE_ANALYZER = PREFIX + "FACE_ANALYZER"
FACE_EMBEDDING = PREFIX + "FACE_EMBEDDING"
GLOBAL_FEATURES = PREFIX + "GLOBAL_FEATURES"
HYPERNET = PREFIX + "MODEL"
LORA_LATENT = PREFIX + "LORA_LATENT"
LORA = PREFIX + "LORA"
GLYPH_TEXT = PREFIX + "GLYPH_TEXT"


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


def _describe(value) -> str:
    if value is None:
        return "nothing"
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"a {name}"


def expect(value, kind: type, type_name: str, where: str, source: str):
    """`value` when it is a `kind`; otherwise a HypernetError that says what arrived and what
    to connect, e.g. when another pack's plain dict reaches a socket of ours."""
    if isinstance(value, kind):
        return value
    raise HypernetError(f"{where} got {_describe(value)}, not this pack's {type_name}: connect the output of "
                        f"{source} (LoRA Hypernet) there. Another pack's value of a similar name does not fit.")


@dataclass(frozen=True)
class GlyphTextValue:
    """The typeface miniature's "text encoder": a glyph model's per-character tables."""

    text: Any  # miniature.base_model.GlyphText
    glyph_size: int  # pixels of one glyph (its latent is half that)
    name: str  # file name in models/glyph_models
