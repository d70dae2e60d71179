"""Seeded random values for tests and benchmarks that need non-trivial weights but not
particular ones: a module's parameters, or the factors of a kohya LoRA of a layout."""
from __future__ import annotations

import torch


def randomised(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """`module` with every parameter drawn from N(0, scale^2): zero-initialised output layers
    would make every condition and every input look alike."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return module


def random_kohya_state(layout, seed: int = 0, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A kohya LoRA state dict (up, down, alpha = rank) for every module of `layout`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for m in layout:
        state[f"{m.name}.lora_up.weight"] = torch.randn(m.out_features, m.rank, generator=gen) * scale
        state[f"{m.name}.lora_down.weight"] = torch.randn(m.rank, m.in_features, generator=gen) * scale
        state[f"{m.name}.alpha"] = torch.tensor(float(m.rank))
    return state
