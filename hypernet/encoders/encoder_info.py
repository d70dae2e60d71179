"""Which image encoder made a set of global features: EncoderInfo (architecture name, output
size, weights fingerprint), recorded in datasets and checkpoints and checked wherever features
meet a model, so that features from another encoder are an error instead of a silent drift."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import HypernetError

SYNTHETIC_FINGERPRINT = "synthetic"  # features from `python -m hypernet synth`, no real encoder
FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class EncoderInfo:
    """Which image encoder made a set of global features."""

    name: str  # open_clip architecture, e.g. "ViT-H-14" (or a synthetic label)
    dim: int  # size of the feature vector
    fingerprint: str  # projection_fingerprint() of the weights, or "synthetic"

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Any) -> "EncoderInfo":
        if isinstance(data, EncoderInfo):
            return data
        if not isinstance(data, Mapping):
            raise HypernetError(f"an image-encoder record must be a dict with name, dim and fingerprint, not {data!r}")
        name, dim, fingerprint = data.get("name"), data.get("dim"), data.get("fingerprint")
        if not isinstance(name, str) or not name or not isinstance(fingerprint, str) or not fingerprint \
                or not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise HypernetError(f"invalid image-encoder record {dict(data)!r}: need a name, a positive dim and a fingerprint")
        return cls(name, dim, fingerprint)

    def describe(self) -> str:
        return f"{self.name} ({self.dim}-d, weights {self.fingerprint})"


def check_encoder_info(encoder, where: str) -> dict:
    """A global image encoder's identity {"name": str, "dim": int, "fingerprint": str}, checked."""
    try:
        return EncoderInfo.from_dict(encoder).to_dict()
    except HypernetError as exc:
        raise HypernetError(f"{where}: {exc}") from exc


def check_encoder(expected: Mapping | EncoderInfo, actual: Mapping | EncoderInfo) -> None:
    """HypernetError unless `actual` is the encoder `expected` names (same name, dim and weights).

    A "synthetic" fingerprint matches only "synthetic": features of a real encoder never pass
    for the made-up ones a synthetic collection was built with, nor the other way round.
    """
    want, got = EncoderInfo.from_dict(expected), EncoderInfo.from_dict(actual)
    if want == got:
        return
    if want.name != got.name or want.dim != got.dim:
        what = "architecture" if want.name != got.name else "feature size"
        raise HypernetError(f"global image features come from {got.describe()}, but this was built with "
                            f"{want.describe()} (different {what}): load that image encoder")
    if SYNTHETIC_FINGERPRINT in (want.fingerprint, got.fingerprint):
        raise HypernetError(f"this was built with synthetic global features ({want.describe()}), which no real image "
                            f"encoder reproduces; got features from {got.describe()}" if want.fingerprint == SYNTHETIC_FINGERPRINT
                            else f"synthetic global features ({got.describe()}) cannot stand in for {want.describe()}")
    raise HypernetError(f"global image features come from {got.describe()}: same architecture as {want.describe()} "
                        "but different weights. Load the same CLIP vision file that the dataset was built with.")


def projection_fingerprint(proj: torch.Tensor) -> str:
    """Short sha256 of the output projection, oriented [width, dim] as open_clip's `visual.proj`.

    Rounded through float16 first: ComfyUI holds CLIP vision weights in float16, so a float32
    file loaded there and here must still give one fingerprint. (transformers' and ComfyUI's
    `visual_projection.weight` is the transpose; callers pass it transposed back.)
    """
    if proj.dim() != 2:
        raise HypernetError(f"an image encoder's projection must be a matrix, not shape {list(proj.shape)}")
    values = proj.detach().to("cpu", torch.float16).to(torch.float32).contiguous().numpy().astype("<f4")
    digest = hashlib.sha256(f"{values.shape[0]}x{values.shape[1]}:".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]
