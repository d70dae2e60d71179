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
checked against their own header before safetensors reads them, so a truncated or lying file
is an error that names the file, not a crash.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .. import GENERATOR
from ..errors import HypernetError
from ..common.files import save_safetensors_atomic
from .layout import UNET_PREFIX, Layout, LoraModule, kohya_unet_name, natural_key, sdxl_attention_shapes

TEXT_ENCODER_PREFIXES = ("lora_te1_", "lora_te2_", "lora_te_")
_LDM_UNET_ROOTS = ("input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_", "out_")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


@dataclass
class ModuleWeights:
    """One module: delta W = (alpha / rank) * up @ down.

    up is [out, rank] (conv: [out, rank, 1, 1]), down is [rank, in] (conv: [rank, in_ch, kh, kw]).
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down[0].numel())

    @property
    def kind(self) -> str:
        return "conv" if self.down.dim() == 4 else "linear"

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.down.shape[2]), int(self.down.shape[3])) if self.down.dim() == 4 else (1, 1)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def up_matrix(self) -> torch.Tensor:
        return self.up.reshape(self.out_features, self.rank)

    def down_matrix(self) -> torch.Tensor:
        return self.down.reshape(self.rank, self.in_features)

    def delta(self) -> torch.Tensor:
        return delta(self)

    def describe(self, name: str) -> LoraModule:
        return LoraModule(name, self.in_features, self.out_features, self.rank, float(self.alpha), self.kind, self.kernel)


def delta(module: ModuleWeights) -> torch.Tensor:
    """delta W [out, in_features] = (alpha / rank) * up @ down, conv kernels flattened."""
    return module.scale * (module.up_matrix() @ module.down_matrix())


class LoraWeights(Mapping):
    """Kohya module name -> ModuleWeights, in natural-sort order, plus the file's metadata."""

    def __init__(self, modules: Mapping[str, ModuleWeights], metadata: Mapping[str, str] | None = None):
        self._modules = {name: modules[name] for name in sorted(modules, key=natural_key)}
        self.metadata: dict[str, str] = dict(metadata or {})

    def __getitem__(self, name: str) -> ModuleWeights:
        return self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def unet_only(self) -> "LoraWeights":
        """The UNet modules alone: text-encoder modules dropped (a MODEL patch never uses them)."""
        return LoraWeights({k: v for k, v in self.items() if k.startswith(UNET_PREFIX)}, self.metadata)

    def __repr__(self) -> str:
        return f"LoraWeights({len(self)} modules)"


# --- key formats ----------------------------------------------------------------------------

# (key suffix, role); the part of the key before the suffix names the module.
_SUFFIXES = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".alpha", "alpha"),
)
_DIFFUSERS_BLOCK = (
    (re.compile(r"^down_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), lambda i, j: f"input_blocks.{3 * i + j + 1}.1"),
    (re.compile(r"^mid_block[._]attentions[._]0[._](.+)$"), lambda: "middle_block.1"),
    (re.compile(r"^up_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), lambda i, j: f"output_blocks.{3 * i + j}.1"),
)
_TRANSFORMER_SUBPATH = re.compile(
    r"^(transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)|proj_in|proj_out)$")
_DIFFUSERS_STYLE_KOHYA = ("down_blocks_", "mid_block_", "up_blocks_")
_TEXT_ENCODER_ROOTS = (("text_encoder.text_model.", "lora_te1_text_model_"),
                       ("text_encoder_2.text_model.", "lora_te2_text_model_"))


def _diffusers_to_ldm(path: str) -> str | None:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> ldm dotted path, or None.

    Accepts dots or underscores as separators (kohya's diffusers naming uses underscores).
    """
    for pattern, block in _DIFFUSERS_BLOCK:
        match = pattern.match(path)
        if match:
            *indices, rest = match.groups()
            rest = _underscores_to_dots(rest) if "." not in rest else rest
            if rest is None or not _TRANSFORMER_SUBPATH.match(rest):
                return None
            return f"{block(*map(int, indices))}.{rest}"
    return None


_SUBPATH_WORDS = ("transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out", "attn1", "attn2", "ff", "net", "proj")


def _underscores_to_dots(rest: str) -> str | None:
    """Kohya flattened `transformer_blocks_0_attn1_to_out_0` back to dots, knowing the sub-path words."""
    out, pos = [], 0
    while pos < len(rest):
        for word in _SUBPATH_WORDS:
            if rest.startswith(word, pos) and (pos + len(word) == len(rest) or rest[pos + len(word)] == "_"):
                out.append(word)
                pos += len(word) + 1
                break
        else:
            number = re.match(r"\d+(?=_|$)", rest[pos:])
            if not number:
                return None
            out.append(number.group())
            pos += len(number.group()) + 1
    return ".".join(out)


def kohya_name(prefix: str) -> str | None:
    """The kohya ldm module name for a key prefix in any accepted format, or None if unknown."""
    if prefix.startswith(TEXT_ENCODER_PREFIXES):
        return prefix
    if prefix.startswith(UNET_PREFIX):
        rest = prefix[len(UNET_PREFIX):]
        if rest.startswith(_DIFFUSERS_STYLE_KOHYA):
            ldm = _diffusers_to_ldm(rest)
            return None if ldm is None else UNET_PREFIX + ldm.replace(".", "_")
        return prefix if rest.startswith(_LDM_UNET_ROOTS) else None
    path = prefix.removeprefix("base_model.model.")
    for diffusers_root, kohya_root in _TEXT_ENCODER_ROOTS:
        if path.startswith(diffusers_root):
            return kohya_root + path[len(diffusers_root):].replace(".", "_")
    path = path.removeprefix("unet.")
    if ".processor." in path:
        path = path.replace(".processor.to_out", ".to_out.0").replace(".processor.", ".")
    ldm = _diffusers_to_ldm(path)
    return None if ldm is None else UNET_PREFIX + ldm.replace(".", "_")


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


# --- reading --------------------------------------------------------------------------------

def _read_header(path: Path) -> dict:
    """The safetensors header, checked against the file size before any tensor is touched."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HypernetError(f"{path}: not a safetensors file (only {size} bytes, too short for a header); "
                                "the file is truncated or not a LoRA")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise HypernetError(f"{path}: header claims {header_len} bytes but the file has only {size - 8} after "
                                "the length field: the file is truncated or not a safetensors file; download it again")
        if header_len > MAX_HEADER_BYTES:
            raise HypernetError(f"{path}: header of {header_len} bytes is larger than safetensors allows; not a LoRA file")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HypernetError(f"{path}: not a safetensors file (its header is not valid JSON: {exc})") from exc
    data_size = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HypernetError(f"{path}: not a safetensors file (tensor {name!r} has no valid data_offsets)") from exc
        if not 0 <= begin <= end <= data_size:
            raise HypernetError(f"{path}: tensor {name!r} needs bytes {begin}..{end} of the data section, but the file "
                                f"holds only {data_size}: the file is truncated; download or copy it again")
    return header


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA .safetensors file in any accepted key format (float32 tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"LoRA file {path} does not exist")
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise HypernetError(f"{path}: safetensors could not read it ({exc}); the file is damaged or not a LoRA") from exc
    return lora_from_state_dict(tensors, metadata, source=str(path))


def lora_from_state_dict(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                         source: str = "LoRA state dict") -> LoraWeights:
    """Parse LoRA tensors in any accepted key format; `source` names the file in error messages."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    prefix_of: dict[str, str] = {}
    unknown = []
    for key in sorted(tensors, key=natural_key):
        split = _split_key(key)
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
    up, down = found["up"].float(), found["down"].float()
    if up.dim() not in (2, 4) or up.dim() != down.dim() or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise HypernetError(f"{source}: module {name} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                            "which are not LoRA factor shapes")
    if up.shape[1] != down.shape[0]:
        raise HypernetError(f"{source}: module {name} mixes ranks: up has rank {up.shape[1]}, down has rank "
                            f"{down.shape[0]}; the file is damaged")
    rank = int(down.shape[0])
    alpha = float(found["alpha"].float().reshape(-1)[0]) if "alpha" in found else float(rank)
    for what, t in (("up", up), ("down", down)):
        if not torch.isfinite(t).all():
            raise HypernetError(f"{source}: module {name} has NaN or Inf values in its {what} weights; "
                                "the LoRA is broken (diverged training?)")
    if not math.isfinite(alpha):
        raise HypernetError(f"{source}: module {name} has a NaN or Inf alpha")
    return ModuleWeights(up.contiguous(), down.contiguous(), alpha)


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
