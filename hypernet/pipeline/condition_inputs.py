"""Which inputs a hypernet is sampled from: the rule and its wording, one for every caller.

The checkpoint's condition says which of the two inputs (a face embedding, global image
features) it reads. An input it needs and was not given is an error, and so is one it would
ignore: a face embedding wired into a hypernet that reads only global features would
otherwise change nothing. The message names the fix in the caller's words (InputWords): a
ComfyUI user sees socket names, a command-line user sees flags.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..common.tensors import l2_normalize
from ..errors import HypernetError
from ..model.condition import needs_face, needs_global
from ..model.hypernet import Hypernet, HypernetConfig

FACE, GLOBAL = "face embedding", "global image features"


@dataclass(frozen=True)
class InputWords:
    """How a caller names the hypernet and tells its user to give or remove each input."""
    who: str = "this hypernet"
    give_face: str = "pass a face embedding"
    give_global: str = "pass global image features"
    drop_face: str = "remove the face embedding"
    drop_global: str = "remove the global image features"
    face_missing: str = "no face embedding was given"
    global_missing: str = "no global image features were given"
    face_unused: str = "a face embedding was given"
    global_unused: str = "global image features were given"


def check_condition_inputs(config: HypernetConfig, face_given: bool, global_given: bool,
                           words: InputWords = InputWords()) -> None:
    """Raise HypernetError when the given inputs do not fit the checkpoint's condition."""
    condition = config.condition
    wants_face, wants_global = needs_face(condition), needs_global(condition)
    needs = " and ".join(name for name, wanted in ((f"a {FACE}", wants_face), (GLOBAL, wants_global)) if wanted)
    about = f"{words.who} is conditioned on '{condition}'"
    if wants_face and not face_given:
        raise HypernetError(f"{about}: {words.give_face}. It needs {needs}; {words.face_missing}.")
    if wants_global and not global_given:
        raise HypernetError(f"{about}: {words.give_global}. It needs {needs} (from the image encoder "
                            f"'{config.global_encoder['name']}'); {words.global_missing}.")
    if face_given and not wants_face:
        raise HypernetError(f"{about} and reads no {FACE}: {words.drop_face}. It needs {needs} only; "
                            f"{words.face_unused}.")
    if global_given and not wants_global:
        raise HypernetError(f"{about} and reads no {GLOBAL}: {words.drop_global}. It needs {needs} only; "
                            f"{words.global_unused}.")


def _as_rows(values) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values).float()
    return x[None] if x.dim() == 1 else x


def condition_rows(embeddings, dim: int) -> torch.Tensor:
    """Embeddings as float [n, dim] rows, each L2-normalised; one vector [dim] becomes one row."""
    x = _as_rows(embeddings)
    if x.dim() != 2 or x.shape[1] != dim:
        raise HypernetError(f"face embeddings must have {dim} values each, got shape {tuple(x.shape)}: "
                            "was it made by another face model?")
    return l2_normalize(x)


def global_rows(features, dim: int, encoder: dict | None) -> torch.Tensor:
    """Global image features as float [n, dim] rows, each L2-normalised."""
    x = _as_rows(features)
    if x.dim() != 2 or x.shape[1] != dim:
        name = (encoder or {}).get("name", "?")
        raise HypernetError(f"global image features must have {dim} values each (the hypernet was trained on "
                            f"features of the image encoder '{name}'), got shape {tuple(x.shape)}: were they made "
                            "by another encoder?")
    return l2_normalize(x)


def condition_inputs(model: Hypernet, embeddings, global_features) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(face rows, global rows) for the checkpoint's condition; each None where it takes none."""
    cfg = model.config
    check_condition_inputs(cfg, embeddings is not None, global_features is not None)
    face = condition_rows(embeddings, cfg.embedding_dim) if embeddings is not None else None
    global_ = global_rows(global_features, cfg.global_dim, cfg.global_encoder) if global_features is not None else None
    if face is not None and global_ is not None and face.shape[0] != global_.shape[0]:
        raise HypernetError(f"{face.shape[0]} face embeddings but {global_.shape[0]} rows of global features: "
                            "give one of each per identity")
    return face, global_
