"""weights2weights rows <-> kohya LoRAs of the `sd15-w2w` layout.

weights2weights (snap-research, NeurIPS 2024) trained one PEFT LoRA per identity on SD1.5
(Realistic Vision 5.1): rank 1, lora_alpha 27, on to_q and to_v of every self- and
cross-attention of the UNet. Each row of its `all_weights.pt` is one identity's PEFT state dict
flattened key by key, in the order of `weight_dimensions.pt` (key -> (numel, shape)), which is
the sorted order of the PEFT keys as `load_peft_weights` returns them from a .safetensors
adapter: down_blocks, mid_block, up_blocks; attn1 before attn2; to_q before to_v; lora_A
(down, [1, in]) before lora_B (up, [out, 1]).

Keys are accepted as PEFT writes them (`base_model.model.<diffusers path>.lora_A.weight`, with
or without an adapter name before `.weight`) and in the `lora_unet_<path>_lora_A.weight`
spelling weights2weights' own conversion code renames from. The factors are copied, never
rescaled: the kohya file stores alpha 27 and rank 1, so PEFT's scale lora_alpha / r = 27 is the
kohya scale alpha / rank, and a row converted to a LoRA and back is bit-identical.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from ..common.messages import brief
from ..errors import HypernetError
from .keys import kohya_name
from .layout import Layout
from .weights import LoraWeights, ModuleWeights

W2W_ALPHA = 27.0
W2W_RANK = 1
W2W_PRESET = "sd15-w2w"
_PEFT_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<role>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_W2W_KEY = re.compile(r"^lora_unet_(?P<path>.+)[._]lora[._](?P<role>[AB])\.weight$")
_ROLES = {"A": "down", "B": "up"}
KEY_QUOTE = 160  # a PEFT key of SD1.5 has up to 95 characters: quote it whole


@dataclass(frozen=True)
class RowEntry:
    """One key of a row: its kohya module, whether it is the up or down factor, its slice and shape."""

    key: str
    module: str
    role: str
    start: int
    shape: tuple[int, ...]

    @property
    def stop(self) -> int:
        return self.start + math.prod(self.shape)


def peft_module(key: str) -> tuple[str, str] | None:
    """(kohya module name, "up" or "down") of a PEFT or weights2weights key, or None."""
    match = _PEFT_KEY.match(key) or _W2W_KEY.match(key)
    if match is None:
        return None
    path = match["path"]
    if key.startswith("lora_unet_"):
        path = "lora_unet_" + path.replace(".", "_")
    name = kohya_name(path)
    return None if name is None else (name, _ROLES[match["role"]])


def w2w_peft_keys() -> list[str]:
    """The PEFT keys of a weights2weights LoRA, in the order of its rows (sorted, as PEFT loads them)."""
    blocks = [f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)] + ["mid_block.attentions.0"] + \
        [f"up_blocks.{i}.attentions.{j}" for i in (1, 2, 3) for j in range(3)]
    return sorted(f"base_model.model.{block}.transformer_blocks.0.{attn}.{proj}.lora_{role}.weight"
                  for block in blocks for attn in ("attn1", "attn2") for proj in ("to_q", "to_v") for role in "AB")


def _expected_shape(layout: Layout, module: str, role: str) -> tuple[int, int]:
    m = layout[module]
    return (m.out_features, m.rank) if role == "up" else (m.rank, m.in_features)


def w2w_dimensions(layout: Layout) -> list[tuple[str, tuple[int, int]]]:
    """(PEFT key, factor shape) in row order, as weights2weights' weight_dimensions.pt lists them."""
    return [(key, _expected_shape(layout, *peft_module(key))) for key in w2w_peft_keys()]


def row_entries(dimensions: Sequence[tuple[str, Sequence[int]]], layout: Layout, name: str = W2W_PRESET
                ) -> list[RowEntry]:
    """Where each key's factor lies in a row, checked against `layout` (preset `name`): every module once,
    up and down."""
    entries, start, seen = [], 0, set()
    for key, shape in dimensions:
        found = peft_module(key)
        if found is None or found[0] not in layout:
            raise HypernetError(f"weight_dimensions key {brief(key, KEY_QUOTE)} is not a module of layout {name}")
        if found in seen:
            raise HypernetError(f"weight_dimensions lists the {found[1]} factor of {found[0]} twice")
        expected = _expected_shape(layout, *found)
        if tuple(shape) != expected:
            raise HypernetError(f"weight_dimensions gives {brief(key, KEY_QUOTE)} the shape {list(shape)}; layout "
                                f"{name} needs {list(expected)}")
        seen.add(found)
        entries.append(RowEntry(key, found[0], found[1], start, tuple(int(d) for d in shape)))
        start = entries[-1].stop
    missing = [f"{m.name} {role}" for m in layout for role in ("up", "down") if (m.name, role) not in seen]
    if missing:
        raise HypernetError(f"weight_dimensions lacks {len(missing)} factors of layout {name}, e.g. {missing[0]}")
    return entries


def row_to_lora(row: torch.Tensor, entries: Sequence[RowEntry]) -> LoraWeights:
    """A kohya LoRA (alpha 27, rank 1) from one row: the factors copied as they are."""
    width = entries[-1].stop if entries else 0
    if row.dim() != 1 or row.numel() != width:
        raise HypernetError(f"a weights2weights row has {width:,} values, not {row.numel():,}")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for e in entries:
        factors.setdefault(e.module, {})[e.role] = row[e.start:e.stop].reshape(e.shape).clone()
    return LoraWeights({name: ModuleWeights(f["up"], f["down"], W2W_ALPHA) for name, f in factors.items()})


def to_w2w_row(weights: LoraWeights, keys: Sequence[str] | None = None) -> torch.Tensor:
    """The weights2weights row of a LoRA of the w2w layout: PEFT factors flattened in `keys` order
    (default: w2w_peft_keys()). Alpha 27 copies the factors; another alpha folds alpha / 27 into up."""
    parts = []
    for key in w2w_peft_keys() if keys is None else keys:
        found = peft_module(key)
        if found is None or found[0] not in weights:
            raise HypernetError(f"the LoRA has no module for weights2weights key {brief(key, KEY_QUOTE)}")
        module = weights[found[0]]
        if module.rank != W2W_RANK or module.kind != "linear":
            raise HypernetError(f"{found[0]} is a {module.kind} module of rank {module.rank}; weights2weights "
                                f"rows hold linear rank-{W2W_RANK} factors")
        factor = module.up if found[1] == "up" else module.down
        if found[1] == "up" and module.alpha != W2W_ALPHA:
            factor = factor * (module.alpha / W2W_ALPHA)
        parts.append(factor.reshape(-1))
    return torch.cat(parts)
