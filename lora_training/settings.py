"""What one LoRA training run is asked to do, and what it reports back (no ComfyUI needed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._hypernet import LR_SCHEDULES, HypernetError


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, steps: int):
    """PyTorch's scheduler for `schedule` over `steps` (step it after each optimizer step), or
    None for a constant rate."""
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    raise HypernetError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


@dataclass(frozen=True)
class TrainingSettings:
    """Settings of one identity LoRA; rank and alpha come from the layout, not from here.

    The defaults are small on purpose (a CPU test trains in seconds); a real SDXL collection
    uses about 500-1000 steps at 1024 px, weights2weights used 800 at 512 px.
    """

    steps: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 1
    resolution: int = 1024
    seed: int = 0
    caption_template: str = "a photo of {token} person"
    token: str = "sks"
    # DreamBooth prior preservation: photos of the class, trained with the class caption so the
    # LoRA does not turn every person into this one.
    class_images: tuple[Path, ...] = ()
    class_caption: str = "a photo of a person"
    prior_loss_weight: float = 1.0
    # The reported losses are means over these many fixed (noise, timestep) draws per image.
    eval_draws: int = 4
    # "cosine": the learning rate falls to 0 over the steps. Noisy steps (small images, few per
    # batch) settle where a constant rate keeps the LoRA jittering (RESULTS: the miniature's LoRAs).
    lr_schedule: str = "constant"

    def __post_init__(self):
        problems = []
        if self.steps < 0:
            problems.append(f"steps must be 0 or more, not {self.steps}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, not {self.learning_rate}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be 1 or more, not {self.batch_size}")
        if self.resolution < 64 or self.resolution % 64:
            problems.append(f"resolution must be a multiple of 64 (64 or more), not {self.resolution}")
        if "{token}" not in self.caption_template:
            problems.append(f"caption_template {self.caption_template!r} must contain {{token}}")
        if self.eval_draws < 1:
            problems.append(f"eval_draws must be 1 or more, not {self.eval_draws}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if problems:
            raise HypernetError("training settings: " + "; ".join(problems))
        object.__setattr__(self, "class_images", tuple(Path(p) for p in self.class_images))

    def caption(self, token: str | None = None) -> str:
        return self.caption_template.replace("{token}", self.token if token is None else token)


@dataclass
class TrainingResult:
    """One trained LoRA. Losses are the mean denoising loss (x0 MSE / sigma^2, i.e. the noise
    MSE) on the training images over fixed noise and timesteps drawn from the seed, the same
    draws for all three."""

    state_dict: dict[str, torch.Tensor]  # kohya keys, exactly the layout's modules
    loss: float  # with the trained LoRA
    base_loss: float  # the base model alone (no LoRA), same images, noise and timesteps
    initial_loss: float  # with the LoRA training started from (= base_loss for a fresh LoRA)
    steps: int
    seconds: float
    train_losses: list[float] = field(default_factory=list)  # one per step, on that step's batch

    def record(self) -> dict:
        """The numbers as plain JSON values (for a per-identity record file)."""
        return {"loss": self.loss, "base_loss": self.base_loss, "initial_loss": self.initial_loss,
                "steps": self.steps, "seconds": round(self.seconds, 3)}


class TrainingStopped(Exception):
    """Training was stopped by the caller's should_stop(); nothing was produced."""
