"""One starting LoRA for every identity of the miniature's collection (`collect --init`).

A fresh LoRA starts with up = 0 and a random down; with a different random down per identity,
each family's update lives in its own random row space, and two families that look alike get
LoRAs that are far apart as vectors: noise the hypernet would have to learn around. Started from
the same factors, the collection differs only by what training put there (our choice;
HyperDreamBooth and weights2weights do not say how their collections were initialised).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from hypernet.lora.lora_io import write_lora
from hypernet.lora.presets import load_layout
from hypernet.lora.weights import LoraWeights, ModuleWeights


def write_shared_start(layout_name: str, path: Path, seed: int = 0) -> Path:
    """up = 0 and down uniform in +-1/sqrt(in) (kaiming_uniform with a = sqrt(5), PyTorch's and
    ComfyUI's LoRA default), from `seed`."""
    layout = load_layout(layout_name)
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for m in layout.modules:
        bound = 1.0 / math.sqrt(m.in_features)
        down = (torch.rand(m.rank, m.in_features, generator=generator) * 2 - 1) * bound
        modules[m.name] = ModuleWeights(torch.zeros(m.out_features, m.rank), down, m.alpha)
    write_lora(path, LoraWeights(modules), base_model=layout.base_model,
               metadata={"miniature": "shared start of every identity LoRA"})
    return path
