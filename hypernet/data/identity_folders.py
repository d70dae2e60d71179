"""Identity folders: finding them in the source folder and reading their embedding files.

The folder format is described in builder's docstring. Every file is read through the same
checked safetensors header as LoRAs, so a hostile embedding or global file skips its folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..common.tensors import mean_embedding
from ..encoders.encoder_info import SYNTHETIC_FINGERPRINT, EncoderInfo
from ..errors import HypernetError
from ..common.messages import one_line
from ..common.safetensors_header import read_header

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EMBEDDING_FILE = "embedding.safetensors"
GLOBAL_FILE = "global.safetensors"
TRUTH_FILE = "truth.safetensors"  # a synthetic collection's noiseless LoRA (synth --truth), not the identity's LoRA
NOT_LORAS = {EMBEDDING_FILE, GLOBAL_FILE, TRUTH_FILE}
EMBEDDING_DIM = 512
UNSPECIFIED_MODEL = "unspecified"


@dataclass
class IdentityFolder:
    id: str
    path: Path
    loras: list[Path]
    photos: list[Path]
    embedding_file: Path | None
    global_file: Path | None = None

    @property
    def needs_face_model(self) -> bool:
        return self.embedding_file is None and bool(self.photos)


def scan_source(src: Path) -> list[IdentityFolder]:
    if not src.is_dir():
        raise HypernetError(f"source folder {src} does not exist")
    folders = []
    for path in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in path.iterdir() if p.is_file())
        embedding, global_file = path / EMBEDDING_FILE, path / GLOBAL_FILE
        folders.append(IdentityFolder(
            path.name, path,
            loras=[f for f in files if f.suffix == ".safetensors" and f.name not in NOT_LORAS],
            photos=[f for f in files if f.suffix.lower() in PHOTO_SUFFIXES],
            embedding_file=embedding if embedding.is_file() else None,
            global_file=global_file if global_file.is_file() else None))
    if not folders:
        raise HypernetError(f"{src} holds no identity folders (one folder per person with a LoRA and photos)")
    return folders


class Skip(Exception):
    """An identity folder that cannot be used: `kind` groups the summary, the message explains."""

    def __init__(self, kind: str, message: str):
        super().__init__(one_line(message, 500))  # one line in the log and the manifest, whatever the cause said
        self.kind = kind


def _header(path: Path) -> dict | None:
    try:
        return read_header(path)
    except HypernetError:  # an unreadable file is reported when the identity is processed
        return None


def embedding_file_model(path: Path) -> str | None:
    header = _header(path)
    return None if header is None else header.get("__metadata__", {}).get("embedding_model")


def global_file_info(path: Path) -> EncoderInfo | None:
    """The encoder a global.safetensors names; None when the file cannot be read."""
    header = _header(path)
    shape = (header or {}).get("embedding", {}).get("shape") or []
    if not shape or shape[-1] < 1:
        return None
    meta = header.get("__metadata__", {})
    return EncoderInfo(meta.get("embedding_model") or UNSPECIFIED_MODEL, int(shape[-1]),
                       meta.get("encoder_fingerprint") or SYNTHETIC_FINGERPRINT)


FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def load_embedding_file(path: Path, dim: int | None = EMBEDDING_DIM) -> tuple[torch.Tensor, dict]:
    """The normalised mean of the file's `embedding` rows ([E] or [k, E]; E = `dim` unless None) and
    the file's metadata; HypernetError when the file is unusable. Shape and dtype are checked from
    the header before a value is read."""
    header = read_header(path)
    if "embedding" not in header:
        raise HypernetError(f"{path} has no tensor named 'embedding'")
    info = header["embedding"]
    shape = info["shape"]
    want = "E" if dim is None else dim
    if len(shape) not in (1, 2) or 0 in shape or (dim is not None and shape[-1] != dim):
        raise HypernetError(f"{path}: 'embedding' has shape {shape}, not [{want}] or [k, {want}]")
    if info["dtype"] not in FLOAT_DTYPES:
        raise HypernetError(f"{path}: 'embedding' holds {info['dtype']} values, not floating point")
    try:
        with safe_open(str(path), framework="pt") as f:
            emb = f.get_tensor("embedding").float()
    except Exception as exc:  # safetensors' own error types
        raise HypernetError(f"{path} cannot be read: {exc}") from exc
    if not torch.isfinite(emb).all():
        raise HypernetError(f"{path}: 'embedding' has NaN or Inf values")
    try:
        return mean_embedding(emb), header.get("__metadata__", {})
    except HypernetError as exc:
        raise HypernetError(f"{path}: {exc}") from exc


def read_embedding_file(path: Path, dim: int = EMBEDDING_DIM, kind: str = "bad embedding file") -> torch.Tensor:
    """load_embedding_file for the builder: Skip (the folder is left out) when the file is unusable."""
    try:
        return load_embedding_file(path, dim)[0]
    except HypernetError as exc:
        raise Skip(kind, str(exc)) from exc
