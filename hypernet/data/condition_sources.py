"""Where each identity's condition comes from: face embeddings of its photos (or its embedding
file) and global image features of its photos (or its global.safetensors)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Union

import numpy as np
import torch

from ..common.tensors import mean_embedding
from ..encoders.encoder_info import EncoderInfo
from ..errors import HypernetError
from .identity_folders import EMBEDDING_FILE, GLOBAL_FILE, IdentityFolder, Skip, global_file_info, read_embedding_file


class FaceEmbedderLike(Protocol):
    """What the builder needs from a face model (hypernet.face.ArcFaceEmbedder provides it)."""

    name: str

    def embed_file(self, path: Path) -> np.ndarray:
        """float32 [512] embedding of the largest face in the image; HypernetError if there is none."""


EmbedderSource = Union[FaceEmbedderLike, Callable[[], FaceEmbedderLike], None]


class GlobalEncoderLike(Protocol):
    """What the builder needs from an image encoder (hypernet.global_features.GlobalImageEncoder)."""

    info: EncoderInfo

    def encode_file(self, path: Path) -> torch.Tensor:
        """L2-normalised global features [G] of one photo; HypernetError if it cannot be read."""


GlobalEncoderSource = Union[GlobalEncoderLike, Callable[[], GlobalEncoderLike], None]


def embed_photos(folder: IdentityFolder, embedder: FaceEmbedderLike) -> torch.Tensor:
    rows = []
    for i, photo in enumerate(folder.photos, 1):
        try:
            rows.append(torch.as_tensor(np.asarray(embedder.embed_file(photo), dtype=np.float32)))
        except (ValueError, OSError) as exc:  # HypernetError is a ValueError: no face, unreadable image
            raise Skip("photo without a usable face", f"photo {i} of {len(folder.photos)} ({photo.name}): {exc}") from exc
    return mean_embedding(torch.stack(rows))


def encode_global_photos(folder: IdentityFolder, encoder: GlobalEncoderLike) -> torch.Tensor:
    """One row per photo, then their normalised mean, like the face embeddings."""
    rows = []
    for i, photo in enumerate(folder.photos, 1):
        try:
            rows.append(torch.as_tensor(encoder.encode_file(photo)).float().reshape(-1))
        except (ValueError, OSError) as exc:  # HypernetError is a ValueError: unreadable image
            raise Skip("unreadable photo", f"photo {i} of {len(folder.photos)} ({photo.name}): {exc}") from exc
    return mean_embedding(torch.stack(rows))


@dataclass
class GlobalPlan:
    """Where each identity's global features come from: photos through `encoder`, or files."""

    info: EncoderInfo
    encoder: GlobalEncoderLike | None = None

    def sources(self, folder: IdentityFolder) -> list[Path]:
        return [folder.global_file] if self.encoder is None else folder.photos

    def features(self, folder: IdentityFolder) -> torch.Tensor:
        if self.encoder is not None:
            if not folder.photos:
                raise Skip("no photos for global features", "global image features are computed from photos, "
                            f"and the folder has none (only {EMBEDDING_FILE})")
            return encode_global_photos(folder, self.encoder)
        named = global_file_info(folder.global_file)
        if named is not None and named != self.info:
            raise Skip("global features from another encoder", f"{GLOBAL_FILE} was made by {named.describe()}, "
                        f"this dataset's global features by {self.info.describe()}")
        return read_embedding_file(folder.global_file, self.info.dim, "bad global features file")


def global_plan(folders: list[IdentityFolder], encoder: GlobalEncoderSource) -> GlobalPlan | None:
    if encoder is not None:
        encoder = encoder if hasattr(encoder, "encode_file") else encoder()
        return GlobalPlan(EncoderInfo.from_dict(encoder.info), encoder)
    having = [f for f in folders if f.global_file]
    if not having:
        return None
    if len(having) != len(folders):
        lacking = [f.id for f in folders if not f.global_file]
        raise HypernetError(f"{len(having)} of {len(folders)} identity folders hold {GLOBAL_FILE}, but "
                            f"{', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''} do not: global features "
                            "must exist for every identity or none (or pass --global-encoder FILE --global-arch NAME "
                            "to compute them from the photos)")
    named = [i for i in (global_file_info(f.global_file) for f in having) if i is not None]
    if not named:
        raise HypernetError(f"no {GLOBAL_FILE} in {folders[0].path.parent} can be read")
    return GlobalPlan(Counter(named).most_common(1)[0][0])


def resolve_embedder(folders: list[IdentityFolder], face_embedder: EmbedderSource) -> FaceEmbedderLike | None:
    needing = [f.id for f in folders if f.needs_face_model]
    if not needing:
        return None
    if face_embedder is None:
        raise HypernetError(f"{len(needing)} identity folders hold photos but no {EMBEDDING_FILE} "
                            f"(e.g. {', '.join(needing[:3])}): pass --face-model DIR, an insightface model folder "
                            "such as models/insightface/models/antelopev2")
    return face_embedder if hasattr(face_embedder, "embed_file") else face_embedder()
