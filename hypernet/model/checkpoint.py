"""Hypernet checkpoints: one .safetensors file, tensors under `vae.`, `prior.`, `norm.`, and
the JSON config plus format version in the safetensors metadata.

Loading trusts nothing in the file: the header is parsed and checked by common.safetensors_header
(no pickle), the
config is validated and bounded by the tensors in the header (config_bounds.py), the model is
then built on the `meta` device (no memory) and every tensor name, shape and dtype is checked
against it before a single weight is read. The prior's weights in the file are its EMA weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .. import GENERATOR
from ..errors import HypernetError
from ..common.files import save_safetensors_atomic
from ..common.safetensors_header import read_header as read_safetensors_header
from .config_bounds import HeaderSizes, check_config_against_tensors, check_layout_size, check_tensor_count
from .hypernet import Hypernet, HypernetConfig
from ..common.messages import brief, one_line

FORMAT = "lora-hypernet"
FORMAT_VERSION = 1
# The config of an SDXL hypernet is about 100 KB (its layout); far more is no config of ours.
MAX_CONFIG_CHARS = 8_000_000


def hypernet_metadata(model: Hypernet, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": model.config.to_json(),
            "base_model": model.layout.base_model, "generator": GENERATOR, **(extra or {})}


def save_hypernet(model: Hypernet, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a crash leaves the previous file (or none), never half a checkpoint."""
    tensors = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    save_safetensors_atomic(tensors, path, hypernet_metadata(model, extra_metadata))


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[list[int], str]]]:
    """(metadata, {tensor name: (shape, dtype)}) of a safetensors file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"hypernet checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise HypernetError(f"{path.name}: hypernet checkpoints are .safetensors files; other formats "
                            "(.pt, .ckpt, .bin) are refused because loading them can run arbitrary code")
    try:
        header = read_safetensors_header(path)
    except HypernetError as exc:
        raise HypernetError(f"{path.name} is not a readable safetensors file ({one_line(str(exc))}); it may be "
                            "truncated or corrupt: download or train it again") from exc
    metadata = header.pop("__metadata__", {})
    check_tensor_count(len(header), path.name)
    return metadata, {name: (info["shape"], info["dtype"]) for name, info in header.items()}


def check_format(metadata: dict[str, str], name: str) -> None:
    if metadata.get("format") != FORMAT:
        raise HypernetError(f"{name} is not a LoRA hypernet checkpoint (its metadata has no format={FORMAT!r}); "
                            "is it a LoRA or a model for another node pack?")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise HypernetError(f"{name} has an invalid format_version {brief(metadata.get('format_version'))}") from None
    if version > FORMAT_VERSION:
        raise HypernetError(f"{name} was written in checkpoint format {brief(version)}, newer than this pack reads "
                            f"({FORMAT_VERSION}): update the node pack")
    if version < 1:
        raise HypernetError(f"{name} has an invalid format_version {brief(version)}")


def config_dict(metadata: dict[str, str], name: str) -> dict:
    """The config JSON object of a checkpoint's metadata, parsed with bounded work."""
    text = metadata.get("config")
    if text is None or len(text) > MAX_CONFIG_CHARS:
        size = "no" if text is None else f"a {len(text):,}-character"
        raise HypernetError(f"{name} has {size} config in its metadata; it is not a checkpoint of this node pack")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: JSON nested thousands of levels deep (json.loads recurses per level).
        raise HypernetError(f"{name} has no valid JSON config in its metadata ({type(exc).__name__}: "
                            f"{one_line(str(exc), 120)})") from None
    if not isinstance(data, dict):
        raise HypernetError(f"{name}: the config in its metadata is not a JSON object")
    return data


def config_from_metadata(metadata: dict[str, str], name: str, sizes: HeaderSizes | None = None) -> HypernetConfig:
    """The checked config; with `sizes` (from the file's header) also bounded by the file's tensors."""
    check_format(metadata, name)
    data = config_dict(metadata, name)
    if sizes is not None:
        check_layout_size(data, sizes, name)
    try:
        config = HypernetConfig.from_dict(data)
    except RecursionError:
        raise HypernetError(f"{name}: its config is nested too deeply to be a hypernet config") from None
    except HypernetError as exc:
        # Messages below quote config values; the file decides how long those are.
        raise HypernetError(f"{name}: {one_line(str(exc), 300)}") from exc
    if sizes is not None:
        check_config_against_tensors(config, sizes, name)
    return config


# Only the first face+global fusion (main before the residual fusion) had biased experts.
FIRST_FUSION_KEY = "prior.fusion.face_expert.bias"


def check_tensors(expected: dict[str, torch.Tensor], found: dict[str, tuple[list[int], str]], name: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        raise HypernetError(f"{name} does not match its own config: {'; '.join(parts)}")
    for key, tensor in expected.items():
        shape, dtype = found[key]
        if list(tensor.shape) != list(shape):
            raise HypernetError(f"{name}: tensor {key} has shape {list(shape)}, its config needs {list(tensor.shape)}")
        if dtype not in ("F32", "F16", "BF16"):
            raise HypernetError(f"{name}: tensor {key} has dtype {dtype}; only float tensors are allowed")


def build_skeleton(config: HypernetConfig, name: str) -> Hypernet:
    """The model the config describes, on the meta device: names and shapes, no memory."""
    try:
        with torch.device("meta"):
            return Hypernet(config)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise HypernetError(f"{name}: its config describes a model that cannot be built "
                            f"({one_line(str(exc), 200)})") from exc


def read_weights(path: Path, keys) -> dict[str, torch.Tensor]:
    """The named tensors as float32, refusing NaN and infinities."""
    state = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in keys:
                state[key] = f.get_tensor(key).float()
    except (SafetensorError, OSError) as exc:  # the file changed or broke after its header was checked
        raise HypernetError(f"{path.name} is not a readable safetensors file ({one_line(str(exc))}); it may be "
                            "truncated or corrupt: download or train it again") from exc
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise HypernetError(f"{path.name}: tensor {key} contains NaN or infinite values; the checkpoint is "
                                "broken (was training diverging?)")
    return state


def load_hypernet(path: str | os.PathLike, device: str | torch.device = "cpu") -> Hypernet:
    """A checked Hypernet in eval mode on `device`; HypernetError for anything untrustworthy."""
    path = Path(path)
    metadata, found = read_header(path)
    config = config_from_metadata(metadata, path.name, HeaderSizes.of(found))
    if config.condition == "face+global" and FIRST_FUSION_KEY in found:
        raise HypernetError(f"{path.name} was trained with the first face+global fusion, which this version replaced "
                            "(its global features could make held-out results worse, see hypernet/model/condition.py); "
                            "train it again with --condition face+global")
    skeleton = build_skeleton(config, path.name)
    check_tensors(skeleton.state_dict(), found, path.name)
    model = skeleton.to_empty(device=device)
    model.load_state_dict(read_weights(path, found))
    return model.eval().requires_grad_(False)
