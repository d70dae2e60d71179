"""The in-memory LoRA every format is read into: kohya module name -> (up, down, alpha)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .layout import UNET_PREFIX, LoraModule, natural_key


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
