"""CLIP image-encoder weights from a .safetensors file (never a pickle), in open_clip's names.

Accepted layouts: open_clip's (`visual.*`, or the visual tower without prefix) and the
transformers layout ComfyUI keeps in models/clip_vision/ (`vision_model.*`,
`visual_projection.weight`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from ..errors import HypernetError
from ..common.safetensors_header import read_header


_HF_TOP = {  # transformers/ComfyUI name -> open_clip visual-tower name
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_HF_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def _from_transformers_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {new: sd[old] for old, new in _HF_TOP.items() if old in sd}
    if "visual_projection.weight" in sd:
        out["proj"] = sd["visual_projection.weight"].t()
    prefix = "vision_model.encoder.layers."
    layers = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)})
    for i in layers:
        src, dst = f"{prefix}{i}.", f"transformer.resblocks.{i}."
        for old, new in _HF_BLOCK.items():
            for kind in ("weight", "bias"):
                if f"{src}{old}.{kind}" in sd:
                    out[f"{dst}{new}.{kind}"] = sd[f"{src}{old}.{kind}"]
        for kind in ("weight", "bias"):  # open_clip keeps q, k, v in one in_proj tensor
            parts = [sd.get(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            if all(p is not None for p in parts):
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts, 0)
    return out


def vision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual tower's weights under open_clip's names, from any of the layouts we accept:
    a whole open_clip CLIP (`visual.*`), a bare open_clip visual tower, or transformers/ComfyUI
    (`vision_model.*` + `visual_projection.weight`). Text-tower weights are ignored."""
    if any(k.startswith("vision_model.") for k in sd):
        return _from_transformers_layout(sd)
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return dict(sd)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, checked to be finite floating-point values."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise HypernetError(f"{path}: image-encoder weights must be a .safetensors file (pickled .bin/.pt files "
                            "can run code when loaded and are refused)")
    if not path.is_file():
        raise HypernetError(f"image-encoder file {path} does not exist")
    try:  # a lying or hostile header is refused before safetensors maps the file
        read_header(path)
    except HypernetError as exc:
        raise HypernetError(f"{path} is not a readable .safetensors file ({str(exc).removeprefix(f'{path}: ')})") from exc
    try:
        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types: truncated or not a safetensors file
        raise HypernetError(f"{path} is not a readable .safetensors file ({exc})") from exc
    for key, tensor in sd.items():
        if not tensor.is_floating_point():
            continue  # e.g. transformers' position_ids buffer
        if not bool(torch.isfinite(tensor).all()):
            raise HypernetError(f"{path}: tensor {key} has NaN or Inf values")
    return sd
