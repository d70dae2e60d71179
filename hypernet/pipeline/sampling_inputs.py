"""The condition inputs of sampling, from files: embedding / global feature files as the dataset
builder writes them, or reference photos through the face model or the image encoder.

Each result is one identity (several vectors averaged, then normalised), checked against what
the hypernet was trained on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.tensors import mean_embedding
from ..data.identity_folders import load_embedding_file
from ..encoders.encoder_info import SYNTHETIC_FINGERPRINT, EncoderInfo, check_encoder
from ..encoders.global_features import GlobalImageEncoder
from ..errors import HypernetError


def read_embedding_file(path: Path, expected_model: str, dim: int) -> torch.Tensor:
    """An `embedding.safetensors` as the dataset builder reads it: [dim] or [k, dim], averaged."""
    embedding, metadata = load_embedding_file(path, dim)
    model = metadata.get("embedding_model")
    if model is not None and model != expected_model:
        raise HypernetError(f"{path} holds a '{model}' embedding but the hypernet needs '{expected_model}'")
    return embedding


def read_global_file(path: Path, expected_encoder: dict) -> torch.Tensor:
    """A `global.safetensors` as the dataset builder reads it ([G] or [k, G], averaged), checked
    against the encoder the hypernet was trained with."""
    features, metadata = load_embedding_file(path, dim=None)
    info = EncoderInfo(metadata.get("embedding_model") or "unspecified", int(features.shape[-1]),
                       metadata.get("encoder_fingerprint") or SYNTHETIC_FINGERPRINT)
    try:
        check_encoder(expected_encoder, info)
    except HypernetError as exc:
        raise HypernetError(f"{path}: {exc}") from exc
    return features


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
