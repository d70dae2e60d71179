"""LoRA weights <-> flat vectors, per-module views, and the normaliser the models train on.

The flat-vector contract: per module in layout order, canonical `up` [out, rank] row-major,
then `down` [rank, in_features] row-major, alpha folded in (delta W = up @ down).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .canonical import canonical_module
from ..errors import HypernetError
from .layout import Layout
from .weights import LoraWeights, ModuleWeights


@dataclass(frozen=True)
class ModuleSlice:
    """Where one module lives in a flat vector: up in [start, mid), down in [mid, stop)."""

    name: str
    start: int
    mid: int
    stop: int
    up_shape: tuple[int, int]
    down_shape: tuple[int, int]


def module_slices(layout: Layout) -> list[ModuleSlice]:
    """One ModuleSlice per module, in layout order."""
    out = []
    for m, start in zip(layout.modules, layout.offsets):
        out.append(ModuleSlice(m.name, start, start + m.up_size, start + m.size,
                               (m.out_features, m.rank), (m.rank, m.in_features)))
    return out


def module_views(vectors: torch.Tensor, layout: Layout) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Name -> (up [..., out, rank], down [..., rank, in]) views into `vectors` [..., D] (no copies)."""
    _check_size(vectors, layout)
    lead = vectors.shape[:-1]
    return {s.name: (vectors[..., s.start:s.mid].view(*lead, *s.up_shape),
                     vectors[..., s.mid:s.stop].view(*lead, *s.down_shape)) for s in module_slices(layout)}


def _check_size(vectors: torch.Tensor, layout: Layout) -> None:
    if vectors.shape[-1] != layout.num_values:
        raise HypernetError(f"vector has {vectors.shape[-1]} values but layout {layout.fingerprint} needs "
                            f"{layout.num_values}; the vector belongs to another layout")


def check_fits(weights: LoraWeights, layout: Layout, source: str = "LoRA") -> None:
    """Raise HypernetError naming missing/extra modules or wrong shapes (ranks may differ)."""
    missing = [n for n in layout.names if n not in weights]
    extra = [n for n in weights if n not in layout]
    problems = []
    if missing:
        problems.append(f"{len(missing)} layout modules are missing, e.g. {', '.join(missing[:3])}")
    if extra:
        problems.append(f"{len(extra)} modules are not in the layout, e.g. {', '.join(extra[:3])}")
    wrong = []
    for m in layout:
        w = weights.get(m.name)
        if w is not None and (w.out_features, w.in_features, w.kind) != (m.out_features, m.in_features, m.kind):
            wrong.append(f"{m.name} ({w.kind} {w.out_features}x{w.in_features}, layout {m.kind} "
                         f"{m.out_features}x{m.in_features})")
    if wrong:
        problems.append(f"{len(wrong)} modules have other shapes, e.g. {', '.join(wrong[:3])}")
    if problems:
        raise HypernetError(f"{source} does not fit layout {layout.fingerprint} ({len(layout)} modules, base model "
                            f"{layout.base_model}): " + "; ".join(problems))


def flatten(weights: LoraWeights, layout: Layout, source: str = "LoRA") -> torch.Tensor:
    """Canonical flat float32 vector [D] of a LoRA, at the layout's ranks."""
    check_fits(weights, layout, source)
    out = torch.empty(layout.num_values, dtype=torch.float32)
    for s, m in zip(module_slices(layout), layout.modules):
        canon = canonical_module(weights[m.name], m.rank)
        out[s.start:s.mid] = canon.up_matrix().reshape(-1)
        out[s.mid:s.stop] = canon.down_matrix().reshape(-1)
    return out


def unflatten(vector: torch.Tensor, layout: Layout) -> LoraWeights:
    """LoraWeights (alpha = rank, conv modules in conv shapes) from a flat vector [D]; copies."""
    if vector.dim() != 1:
        raise HypernetError(f"unflatten takes one vector [D], not a tensor of shape {tuple(vector.shape)}")
    views = module_views(vector, layout)
    modules = {}
    for m in layout:
        up, down = views[m.name]
        if m.kind == "conv":
            up = up.reshape(m.out_features, m.rank, 1, 1)
            down = down.reshape(m.rank, m.in_channels, *m.kernel)
        modules[m.name] = ModuleWeights(up.clone(), down.clone(), float(m.rank))
    return LoraWeights(modules)


def flatten_batch(loras: Iterable[LoraWeights], layout: Layout) -> torch.Tensor:
    """[N, D] from N LoRAs."""
    return torch.stack([flatten(w, layout) for w in loras])


def unflatten_batch(vectors: torch.Tensor, layout: Layout) -> list[LoraWeights]:
    return [unflatten(v, layout) for v in vectors]


class Normalizer:
    """x -> (x - mean) / std, with mean and std [D] fitted on a dataset.

    Mode "dim": per-dimension mean and std. Mode "module": per-dimension mean, one std per
    module (its values pooled), which keeps the relative sizes of values inside a module. Mode
    "global": per-dimension mean, one std for all (every value pooled), which keeps the relative
    sizes of all dimensions (a linear autoencoder's principal coordinates).
    Stds below a floor relative to the largest are raised to it, so constant dimensions (e.g.
    zero-padded ranks) neither divide by zero nor let denormalised noise swamp them; data with
    no spread at all (one sample) gets std 1.
    """

    MODES = ("dim", "module", "global")
    RELATIVE_FLOOR = 1e-6

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        if mean.shape != std.shape or mean.dim() != 1:
            raise HypernetError(f"normaliser mean {tuple(mean.shape)} and std {tuple(std.shape)} must be equal [D] shapes")
        if not bool((std > 0).all()):
            raise HypernetError("normaliser std must be positive everywhere")
        self.mean = mean.float()
        self.std = std.float()

    @classmethod
    def fit(cls, data: torch.Tensor, layout: Layout | None = None, mode: str = "dim", chunk_rows: int = 64) -> "Normalizer":
        """Fit on data [N, D] (rows streamed in float64 chunks, so N x D is never copied)."""
        if mode not in cls.MODES:
            raise HypernetError(f"normaliser mode must be one of {cls.MODES}, not {mode!r}")
        if data.dim() != 2 or data.shape[0] < 1:
            raise HypernetError(f"normaliser needs data [N, D] with N >= 1, got {tuple(data.shape)}")
        total = torch.zeros(data.shape[1], dtype=torch.float64)
        for chunk in data.split(chunk_rows):
            total += chunk.double().sum(0)
        mean = total / data.shape[0]
        squares = torch.zeros_like(mean)
        for chunk in data.split(chunk_rows):
            squares += (chunk.double() - mean).square().sum(0)
        var = squares / data.shape[0]
        if mode == "module":
            if layout is None:
                raise HypernetError("normaliser mode 'module' needs the layout")
            _check_size(data, layout)
            for s in module_slices(layout):
                var[s.start:s.stop] = var[s.start:s.stop].mean()
        elif mode == "global":
            var = var.mean().expand_as(var).clone()
        std = var.sqrt()
        largest = float(std.max())
        floor = largest * cls.RELATIVE_FLOOR if largest > 0 else 1.0  # one sample or constant data: no scaling
        return cls(mean.float(), std.clamp_min(floor).float())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z) + self.mean.to(z)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "Normalizer":
        missing = {"mean", "std"} - set(state)
        if missing:
            raise HypernetError(f"normaliser state lacks {', '.join(sorted(missing))}")
        return cls(state["mean"], state["std"])

