"""Reading LoRA files in the key formats ComfyUI accepts for SDXL UNets, and writing kohya files.

Every format is read into one canonical in-memory form, `LoraWeights`: kohya module name
(`lora_unet_<ldm path with . as _>`) -> `ModuleWeights(up, down, alpha)`. Accepted keys:

- kohya, ldm names: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight`,
  `.lora_down.weight`, `.alpha` (text encoders: `lora_te1_`, `lora_te2_`, `lora_te_` kept as is; diffusers/PEFT
  `text_encoder[_2].text_model...` keys become `lora_te1_` / `lora_te2_` names);
- kohya, diffusers block names: `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_...`;
- diffusers attention processors: `[unet.]down_blocks.1.attentions.0.transformer_blocks.0.attn1.
  processor.to_q_lora.up.weight` / `.down.weight` (`to_out_lora` is `to_out.0`);
- PEFT: `[base_model.model.][unet.]down_blocks.1...attn1.to_q.lora_B.weight` (up) / `lora_A` (down),
  also with the adapter name `.lora_B.default.weight`;
- diffusers LoRACompatibleLinear: `[unet.]down_blocks.1...attn1.to_q.lora.up.weight` / `.lora.down.weight`.

Diffusers block names map to ldm names for SDXL (two res blocks per level); only the attention
blocks (`attentions`) map, anything else outside them is refused with the keys named. Files are
checked against their own header before safetensors reads them (common.safetensors_header), so a
truncated or lying file is an error that names the file, not a crash; values no trained LoRA
has (non-float factors, rank 0, huge magnitudes, NaN) are refused the same way.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from .. import GENERATOR
from ..errors import HypernetError
from ..common.files import save_safetensors_atomic
from .keys import kohya_name, split_key
from .layout import MAX_MODULES, UNET_PREFIX, Layout, kohya_unet_name, natural_key
from .presets import sdxl_attention_shapes
from ..common.safetensors_header import read_header
from .weights import LoraWeights, ModuleWeights

# Trained LoRA factors stay below about 10 (kohya's are mostly 0.001-1). 1e4 leaves three orders
# of magnitude for unusual trainers, yet refuses factors whose products overflow float16
# (1e4 * 1e4 > 65504), the precision ComfyUI often patches in; so larger values, or a larger
# alpha / rank, mean a damaged or hostile file.
MAX_FACTOR_VALUE = 1e4
MAX_KEY_CHARS = 500  # the longest kohya key of SDXL has about 90
MAX_TENSORS = 3 * MAX_MODULES  # up, down and alpha of the most modules a layout may have


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA .safetensors file in any accepted key format (float32 tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"LoRA file {path} does not exist")
    header = read_header(path)
    metadata = header.get("__metadata__") or {}
    count = len(header) - ("__metadata__" in header)
    if count > MAX_TENSORS:  # refused before safetensors loads them all
        raise HypernetError(f"{path}: holds {count:,} tensors, more than the {MAX_TENSORS:,} of the largest "
                            "LoRA this pack reads; the file is damaged or not a LoRA")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        reason = " ".join(str(exc).split())[:200]
        raise HypernetError(f"{path}: safetensors could not read it ({reason}); the file is damaged or not a LoRA") from exc
    return lora_from_state_dict(tensors, metadata, source=str(path))


def lora_from_state_dict(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                         source: str = "LoRA state dict") -> LoraWeights:
    """Parse LoRA tensors in any accepted key format; `source` names the file in error messages."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    prefix_of: dict[str, str] = {}
    unknown = []
    for key in sorted(tensors, key=natural_key):
        if not key.isprintable() or len(key) > MAX_KEY_CHARS:  # it would end up in one-line messages
            raise HypernetError(f"{source}: key {key[:80]!r} has control characters or more than {MAX_KEY_CHARS} "
                                "characters; it is no LoRA key, the file is damaged")
        split = split_key(key)
        name = kohya_name(split[0]) if split else None
        if name is None:
            unknown.append(key)
            continue
        prefix, role = split
        first = prefix_of.setdefault(name, prefix)
        if first != prefix:
            raise HypernetError(f"{source}: module {name} is given twice, as {first!r} and as {prefix!r} (two key "
                                "formats for the same layer); keep one of them")
        parts.setdefault(name, {})[role] = tensors[key]
    if unknown:
        raise HypernetError(f"{source}: {len(unknown)} keys are not LoRA weights of a known format or name no SDXL UNet "
                            f"attention layer, e.g. {', '.join(unknown[:5])}")
    if not parts:
        raise HypernetError(f"{source}: contains no LoRA weights")
    modules = {name: _module(name, found, source) for name, found in parts.items()}
    return LoraWeights(modules, metadata)


def _module(name: str, found: Mapping[str, torch.Tensor], source: str) -> ModuleWeights:
    if "up" not in found or "down" not in found:
        have = ", ".join(sorted(found))
        raise HypernetError(f"{source}: module {name} has {have} but not both up and down weights; the file is incomplete")
    up, down = found["up"], found["down"]
    if up.dim() not in (2, 4) or up.dim() != down.dim() or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise HypernetError(f"{source}: module {name} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                            "which are not LoRA factor shapes")
    if up.shape[1] != down.shape[0]:
        raise HypernetError(f"{source}: module {name} mixes ranks: up has rank {up.shape[1]}, down has rank "
                            f"{down.shape[0]}; the file is damaged")
    if up.numel() == 0 or down.numel() == 0:
        raise HypernetError(f"{source}: module {name} has empty factors (up {tuple(up.shape)}, down "
                            f"{tuple(down.shape)}): a LoRA module needs rank 1 or more; the file is damaged")
    rank = int(down.shape[0])
    alpha = _alpha(name, found.get("alpha"), rank, source)
    up, down = _factor(name, "up", up, source), _factor(name, "down", down, source)
    return ModuleWeights(up.contiguous(), down.contiguous(), alpha)


def _factor(name: str, what: str, tensor: torch.Tensor, source: str) -> torch.Tensor:
    """The factor as float32, refused when it holds values no trained LoRA has."""
    if not tensor.is_floating_point():
        raise HypernetError(f"{source}: module {name} stores its {what} weights as {str(tensor.dtype)[6:]}, "
                            "not floating point: the file is damaged or not a LoRA")
    values = tensor.float()
    low, high = (float(v) for v in torch.aminmax(values))  # one pass for both checks
    if not (math.isfinite(low) and math.isfinite(high)):
        raise HypernetError(f"{source}: module {name} has NaN or Inf values in its {what} weights; "
                            "the LoRA is broken (diverged training?)")
    if max(-low, high) > MAX_FACTOR_VALUE:
        raise HypernetError(f"{source}: module {name} has {what} weights up to {max(-low, high):.3g}, beyond "
                            f"{MAX_FACTOR_VALUE:g}, which no trained LoRA reaches; the file is damaged or not a LoRA")
    return values


def _alpha(name: str, alpha: torch.Tensor | None, rank: int, source: str) -> float:
    if alpha is None:
        return float(rank)
    # An integer alpha is an exact number and is read as one; bool or complex is no alpha at all.
    if alpha.numel() != 1 or alpha.dtype == torch.bool or alpha.is_complex():
        raise HypernetError(f"{source}: module {name} has an alpha of shape {list(alpha.shape)} and type "
                            f"{str(alpha.dtype)[6:]}; alpha is one number; the file is damaged")
    value = float(alpha.reshape(-1)[0])
    if not math.isfinite(value):
        raise HypernetError(f"{source}: module {name} has a NaN or Inf alpha")
    if abs(value) / rank > MAX_FACTOR_VALUE:
        raise HypernetError(f"{source}: module {name} has alpha {value:.3g} at rank {rank}, a scale beyond "
                            f"{MAX_FACTOR_VALUE:g}, which no trained LoRA reaches; the file is damaged or not a LoRA")
    return value


def layout_from_lora(weights: LoraWeights, base_model: str) -> Layout:
    """The layout a LoRA has: its modules with their shapes, ranks and alphas."""
    return Layout(tuple(m.describe(name) for name, m in weights.items()), base_model)


def guess_base_model(weights: LoraWeights) -> str:
    """"sdxl", "sd15" or "unknown": from the file's metadata, else from SDXL attention shapes."""
    tag = weights.metadata.get("hypernet.base_model") or weights.metadata.get("ss_base_model_version", "")
    if tag.startswith("sdxl"):
        return "sdxl"
    if tag.startswith(("sd_v1", "sd15")):
        return "sd15"
    sdxl = {kohya_unet_name(key): shape for key, shape in sdxl_attention_shapes().items()}
    unet = {name: m for name, m in weights.items() if name.startswith(UNET_PREFIX)}
    if unet and all(sdxl.get(name) == (m.out_features, m.in_features) for name, m in unet.items()):
        return "sdxl"
    return "unknown"


# --- writing --------------------------------------------------------------------------------

BASE_MODEL_TAGS = {
    # base model -> (kohya ss_base_model_version, modelspec.architecture)
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    "sd15": ("sd_v1", "stable-diffusion-v1/lora"),
}


def lora_to_state_dict(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """Kohya ldm keys -> tensors: exactly what write_lora writes (alpha is a 0-d tensor)."""
    state = {}
    for name, m in weights.items():
        state[f"{name}.lora_up.weight"] = m.up.contiguous()
        state[f"{name}.lora_down.weight"] = m.down.contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(m.alpha), dtype=m.up.dtype)
    return state


def _same_or(values: set, many: str = "Dynamic") -> str:
    if len(values) == 1:
        value = next(iter(values))
        return str(int(value)) if float(value).is_integer() else str(value)
    return many


def lora_metadata(weights: LoraWeights, base_model: str, metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """Safetensors metadata for a kohya file: the caller's entries plus rank, alpha and base model.

    The facts about the weights are computed here and win over caller entries of the same name.
    """
    version, architecture = BASE_MODEL_TAGS.get(base_model, (base_model, f"{base_model}/lora"))
    facts = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": _same_or({m.rank for m in weights.values()}),
        "ss_network_alpha": _same_or({m.alpha for m in weights.values()}),
        "ss_base_model_version": version,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "hypernet.base_model": base_model,
        "generator": GENERATOR,
    }
    return {**{str(k): str(v) for k, v in (metadata or {}).items()}, **facts}


def write_lora(path: str | os.PathLike, weights: LoraWeights, *, base_model: str,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write a kohya LoRA file atomically (a temp file beside it, then a rename)."""
    save_safetensors_atomic(lora_to_state_dict(weights), path, lora_metadata(weights, base_model, metadata))
