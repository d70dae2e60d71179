"""How evaluate-images draws: the stock KSampler's settings (no ComfyUI needed to hold them)."""
from __future__ import annotations

from dataclasses import dataclass

from lora_training._hypernet import HypernetError


@dataclass(frozen=True)
class DrawSettings:
    steps: int = 20
    cfg: float = 3.0
    sampler: str = "euler"
    scheduler: str = "normal"
    resolution: int = 1024  # checkpoints: image side in pixels; a glyph model draws at its own glyph size

    def __post_init__(self):
        if self.steps < 1:
            raise HypernetError(f"--sample-steps must be 1 or more, not {self.steps}")
        if self.cfg < 0:
            raise HypernetError(f"--cfg must not be negative, not {self.cfg}")
        if self.resolution < 64 or self.resolution % 64:
            raise HypernetError(f"--resolution must be a multiple of 64 (64 or more), not {self.resolution}")
