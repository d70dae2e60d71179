"""The condition inputs of sampling, from files: embedding / global feature files as the dataset
builder writes them, or reference photos through the face model or the image encoder.

Each result is one identity (several vectors averaged, then normalised), checked against what
the hypernet was trained on.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..common.tensors import mean_embedding
from ..encoders.global_features import SYNTHETIC_FINGERPRINT, EncoderInfo, GlobalImageEncoder, check_encoder
from ..errors import HypernetError


def _read_vectors(path: Path) -> tuple[torch.Tensor, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            if "embedding" not in f.keys():
                raise HypernetError(f"{path} has no tensor named 'embedding'")
            return f.get_tensor("embedding"), f.metadata() or {}
    except HypernetError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise HypernetError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_embedding_file(path: Path, expected_model: str) -> torch.Tensor:
    """An `embedding.safetensors` as the dataset builder reads it: [512] or [k, 512], averaged."""
    embedding, metadata = _read_vectors(path)
    model = metadata.get("embedding_model")
    if model is not None and model != expected_model:
        raise HypernetError(f"{path} holds a '{model}' embedding but the hypernet needs '{expected_model}'")
    return mean_embedding(embedding)


def read_global_file(path: Path, expected_encoder: dict) -> torch.Tensor:
    """A `global.safetensors` as the dataset builder reads it ([G] or [k, G], averaged), checked
    against the encoder the hypernet was trained with."""
    features, metadata = _read_vectors(path)
    info = EncoderInfo(metadata.get("embedding_model") or "unspecified", int(features.shape[-1]),
                       metadata.get("encoder_fingerprint") or SYNTHETIC_FINGERPRINT)
    try:
        check_encoder(expected_encoder, info)
    except HypernetError as exc:
        raise HypernetError(f"{path}: {exc}") from exc
    return mean_embedding(features)


def embed_face_photos(photos: list[Path], face_model: Path, expected_model: str) -> torch.Tensor:
    """The mean face embedding of reference photos, by the insightface model in `face_model`."""
    from ..encoders.face import ArcFaceEmbedder  # insightface loads only when photos are given
    embedder = ArcFaceEmbedder(face_model)
    if embedder.name != expected_model:
        raise HypernetError(f"the hypernet was trained on '{expected_model}' embeddings but --face-model "
                            f"gives '{embedder.name}'")
    return mean_embedding(torch.as_tensor([embedder.embed_file(p) for p in photos]))


def encode_global_photos(photos: list[Path], encoder_file: Path, arch: str, expected_encoder: dict,
                         device: str = "cpu") -> torch.Tensor:
    """The mean global image features of reference photos, by the CLIP image encoder in `encoder_file`."""
    encoder = GlobalImageEncoder.load(encoder_file, arch, device=device)
    check_encoder(expected_encoder, encoder.info)
    return mean_embedding(torch.stack([encoder.encode_file(p).float().cpu() for p in photos]))
