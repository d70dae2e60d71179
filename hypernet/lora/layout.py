"""LoRA layouts: which modules a LoRA touches, with what shapes, in a fixed order.

A layout is the contract between LoRA files, the flat weight vectors the hypernetwork learns
on, and the model that gets patched. Modules are kept in natural-sort order of their kohya
names so that a layout built from a LoRA file, from a model's state dict or from a preset is
the same value whatever order its source listed the modules in.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

LAYOUT_VERSION = 1
UNET_PREFIX = "lora_unet_"
# SDXL's UNet and both text encoders together have about 2,000 linear and conv layers a LoRA
# can touch; 100,000 leaves room for any model while a damaged layout is refused at once.
MAX_MODULES = 100_000

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders block_2 before block_10."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module: delta W [out_features, in_features] = (alpha / rank) * up @ down.

    For a conv module in_features is in_channels * kh * kw; up is stored [out, rank, 1, 1] and
    down [rank, in_channels, kh, kw] in files, and flattened as matrices in vectors.
    """

    name: str
    in_features: int
    out_features: int
    rank: int
    alpha: float
    kind: str = "linear"
    kernel: tuple[int, int] = (1, 1)

    def __post_init__(self):
        if self.kind not in ("linear", "conv"):
            raise ValueError(f"LoRA module {self.name}: kind must be 'linear' or 'conv', not {self.kind!r}")
        for what in ("in_features", "out_features", "rank"):
            if int(getattr(self, what)) <= 0:
                raise ValueError(f"LoRA module {self.name}: {what} must be positive")
        object.__setattr__(self, "kernel", tuple(int(k) for k in self.kernel))

    @property
    def up_size(self) -> int:
        return self.out_features * self.rank

    @property
    def down_size(self) -> int:
        return self.rank * self.in_features

    @property
    def size(self) -> int:
        """Number of values this module takes in a flat vector (up, then down)."""
        return self.up_size + self.down_size

    @property
    def in_channels(self) -> int:
        return self.in_features // (self.kernel[0] * self.kernel[1])

    def with_rank(self, rank: int, alpha: float | None = None) -> "LoraModule":
        return LoraModule(self.name, self.in_features, self.out_features, rank,
                          float(rank if alpha is None else alpha), self.kind, self.kernel)

    def to_list(self) -> list:
        return [self.name, self.in_features, self.out_features, self.rank, self.alpha, self.kind, list(self.kernel)]

    @classmethod
    def from_list(cls, item: Sequence) -> "LoraModule":
        name, fin, fout, rank, alpha, kind, kernel = item
        return cls(str(name), int(fin), int(fout), int(rank), float(alpha), str(kind), tuple(kernel))


@dataclass(frozen=True)
class Layout:
    """Ordered, immutable list of LoRA modules plus the base model they belong to."""

    modules: tuple[LoraModule, ...]
    base_model: str = "unknown"
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if len(self.modules) > MAX_MODULES:
            raise ValueError(f"a layout of {len(self.modules):,} modules is more than the {MAX_MODULES:,} this "
                             "pack accepts; the layout is damaged")
        mods = tuple(sorted(self.modules, key=lambda m: natural_key(m.name)))
        index = {m.name: i for i, m in enumerate(mods)}
        if len(index) != len(mods):
            counts = Counter(m.name for m in mods)
            dupes = sorted(n for n, c in counts.items() if c > 1)
            raise ValueError(f"layout lists modules more than once: {', '.join(dupes[:5])}")
        if not mods:
            raise ValueError("a layout needs at least one LoRA module")
        object.__setattr__(self, "modules", mods)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> LoraModule:
        return self.modules[self._index[name]]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modules]

    @property
    def num_values(self) -> int:
        return sum(m.size for m in self.modules)

    @property
    def offsets(self) -> list[int]:
        """Start of each module in the flat vector; the last entry is num_values."""
        out, pos = [], 0
        for m in self.modules:
            out.append(pos)
            pos += m.size
        out.append(pos)
        return out

    @property
    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules}

    def with_rank(self, rank: int) -> "Layout":
        return Layout(tuple(m.with_rank(rank) for m in self.modules), self.base_model)

    def to_dict(self) -> dict:
        return {"version": LAYOUT_VERSION, "base_model": self.base_model,
                "modules": [m.to_list() for m in self.modules]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping) -> "Layout":
        version = int(data.get("version", 0))
        if version != LAYOUT_VERSION:
            raise ValueError(f"layout format version {version} is not supported (this code reads version {LAYOUT_VERSION})")
        modules = data["modules"]
        if len(modules) > MAX_MODULES:  # refused before building a single module
            raise ValueError(f"a layout of {len(modules):,} modules is more than the {MAX_MODULES:,} this pack "
                             "accepts; the layout is damaged")
        return cls(tuple(LoraModule.from_list(m) for m in modules), str(data.get("base_model", "unknown")))

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        return cls.from_dict(json.loads(text))

    @property
    def fingerprint(self) -> str:
        """Short hash of the shapes (not of the alphas), to tell layouts apart in messages."""
        shapes = [[m.name, m.in_features, m.out_features, m.rank, m.kind, list(m.kernel)] for m in self.modules]
        return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:12]


# --- building layouts from model weights -------------------------------------------------

ATTENTION_PROJECTIONS = ("q", "k", "v", "out")
_ATTN_KEY = re.compile(r"^(?P<block>.+)\.attn(?P<which>[12])\.to_(?P<proj>q|k|v|out\.0)\.weight$")
_UNET_KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def kohya_unet_name(param_key: str) -> str:
    """`input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight` -> kohya module name."""
    for prefix in _UNET_KEY_PREFIXES:
        if param_key.startswith(prefix):
            param_key = param_key[len(prefix):]
            break
    if param_key.endswith(".weight"):
        param_key = param_key[: -len(".weight")]
    return UNET_PREFIX + param_key.replace(".", "_")


def attention_layout(shapes: Mapping[str, Sequence[int]], rank: int, projections: Iterable[str] = ATTENTION_PROJECTIONS,
                     self_attention: bool = True, cross_attention: bool = True, alpha: float | None = None,
                     base_model: str = "unknown") -> Layout:
    """Layout over the attention projections of a UNet, from its parameter names and shapes.

    `shapes` maps ldm parameter names (with or without `diffusion_model.`) to weight shapes, as
    `{k: v.shape for k, v in unet.state_dict().items()}` gives, also for a model on `meta`.
    """
    projections = set(projections)
    unknown = projections - set(ATTENTION_PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown attention projections {sorted(unknown)}; choose from {ATTENTION_PROJECTIONS}")
    wanted_attn = {"1"} if self_attention else set()
    if cross_attention:
        wanted_attn.add("2")
    modules = []
    for key, shape in shapes.items():
        match = _ATTN_KEY.match(key)
        if not match or match["which"] not in wanted_attn:
            continue
        if match["proj"].split(".")[0] not in projections:
            continue
        out_features, in_features = int(shape[0]), int(shape[1])
        modules.append(LoraModule(kohya_unet_name(key), in_features, out_features, rank,
                                  float(rank if alpha is None else alpha)))
    if not modules:
        raise ValueError("no attention projections found in these weights: is this a UNet state dict?")
    return Layout(tuple(modules), base_model)


def layout_mismatches(layout: Layout, target_shapes: Mapping[str, Sequence[int] | None], limit: int = 5) -> list[str]:
    """Why `layout` does not fit a model, as readable lines (empty when it fits).

    `target_shapes` maps the kohya names a model accepts to its weight shapes (None when the
    name is accepted but its shape is unknown).
    """
    problems = []
    missing = [m.name for m in layout.modules if m.name not in target_shapes]
    if missing:
        problems.append(f"{len(missing)} of {len(layout)} LoRA modules do not exist in the model, "
                        f"e.g. {', '.join(missing[:limit])}")
    wrong = []
    for m in layout.modules:
        shape = target_shapes.get(m.name)
        if shape is None:
            continue
        out_f, in_f = int(shape[0]), 1
        for dim in shape[1:]:
            in_f *= int(dim)
        if (out_f, in_f) != (m.out_features, m.in_features):
            wrong.append(f"{m.name} (LoRA {m.out_features}x{m.in_features}, model {out_f}x{in_f})")
    if wrong:
        problems.append(f"{len(wrong)} modules have other shapes than the model's: {', '.join(wrong[:limit])}")
    return problems
