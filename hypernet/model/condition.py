"""What the prior is conditioned on: the face embedding, global image features, or both fused.

DiffLoRA (arXiv 2408.06740) fuses ArcFace face features with global image features from a
CLIP image encoder through a mixture-of-experts style gate. The paper's gate equations are
not public; the ones below are OURS.

With f the L2-normalised face embedding [E], g the L2-normalised global features [G],
u = [f, g] their concatenation and C = E the condition size the denoiser reads:

    experts   e_face = W_f f,   e_global = W_g g,   e_joint = W_u u        (each [C], zero-initialised)
    gate      p = softmax(W_2 silu(W_1 u + b_1) + b_2)                   ([3], sums to 1)
    condition c = f + p_face e_face + p_global e_global + p_joint e_joint

The face passes through unchanged and the experts add gated corrections to it, so a fresh
face+global prior is exactly the face-only prior, and training moves away from it only as far
as the global features help. (Our first version replaced f by a LayerNormed mixture of randomly
initialised experts; on a collection whose LoRAs ignore the global features it used them to tell
training identities apart and fell from 0.95 to 0.76 held-out top-1, see RESULTS.md.)

For condition "global", c = unit(W_g g + b_g), where `unit(x)` is LayerNorm without affine
parameters divided by sqrt(C): the projected vector gets the unit norm a face embedding has, so
the denoiser's condition pathway sees the same scale in every mode. For condition "face" there
is no fusion module at all: the face embedding is the condition exactly as before this module
existed (same parameters, same outputs).

Global penalty (ours, training only): the loss adds global_penalty * mean ||p_global e_global +
p_joint e_joint||^2, so the global features move the condition only where that pays for itself
in the denoising loss. Without it the prior used the global features to tell training
identities apart even where the LoRAs ignore them. Measured on the two synthetic collections of
benchmarks/bench_condition.py (held-out top-1, LoRAs depending on the face only / on both;
face-only prior 0.95 / 0.35): no penalty 0.81 / 0.93, 0.005 0.91 / 0.83, 0.02 0.94 / 0.51, 0.1
0.95 / 0.31, an L1 penalty of 0.01 0.94 / 0.49; dropping the corrections for half the training
rows instead 0.95 / 0.30. 0.005 is the default: within sampling noise of the face-only prior
where the global features carry nothing, and well above it where they do.

Classifier-free guidance is unchanged: the denoiser's learned null condition replaces the
fused vector c, not its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HypernetError
from ..common.messages import brief

CONDITIONS = ("face", "global", "face+global")
GATE_HIDDEN = 64  # ours: the gate only has to pick between three experts


def check_condition(condition: str) -> str:
    if condition not in CONDITIONS:
        raise HypernetError(f"condition must be one of {CONDITIONS}, not {brief(condition)}")
    return condition


def needs_face(condition: str) -> bool:
    return "face" in check_condition(condition).split("+")


def needs_global(condition: str) -> bool:
    return "global" in check_condition(condition).split("+")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:]) / math.sqrt(x.shape[-1])


class GlobalProjection(nn.Module):
    """Condition "global": the global features projected to the condition size."""

    def __init__(self, global_dim: int, cond_dim: int):
        super().__init__()
        self.global_expert = nn.Linear(global_dim, cond_dim)

    def forward(self, face: torch.Tensor | None, global_: torch.Tensor) -> torch.Tensor:
        return _unit(self.global_expert(global_))


class GatedFusion(nn.Module):
    """Condition "face+global": the face plus gated expert corrections (equations above)."""

    EXPERTS = ("face", "global", "joint")

    def __init__(self, face_dim: int, global_dim: int, cond_dim: int):
        super().__init__()
        if cond_dim != face_dim:
            raise HypernetError(f"face+global fusion adds to the face embedding: condition size {cond_dim} "
                                f"must equal the face embedding size {face_dim}")
        self.face_expert = nn.Linear(face_dim, cond_dim, bias=False)
        self.global_expert = nn.Linear(global_dim, cond_dim, bias=False)
        self.joint_expert = nn.Linear(face_dim + global_dim, cond_dim, bias=False)
        for expert in (self.face_expert, self.global_expert, self.joint_expert):
            nn.init.zeros_(expert.weight)
        self.gate = nn.Sequential(nn.Linear(face_dim + global_dim, GATE_HIDDEN), nn.SiLU(),
                                  nn.Linear(GATE_HIDDEN, len(self.EXPERTS)))

    def gate_weights(self, face: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """[n, 3] mixture weights over (face, global, joint); each row sums to 1."""
        return torch.softmax(self.gate(torch.cat([face, global_], dim=-1)), dim=-1)

    def parts(self, face: torch.Tensor, global_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f + p_face e_face, p_global e_global + p_joint e_joint): the condition is their sum;
        training penalises the second (TrainConfig.global_penalty)."""
        joint = torch.cat([face, global_], dim=-1)
        weights = self.gate_weights(face, global_)
        face_part = face + weights[:, :1] * self.face_expert(face)
        return face_part, weights[:, 1:2] * self.global_expert(global_) + weights[:, 2:] * self.joint_expert(joint)

    def forward(self, face: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        face_part, global_part = self.parts(face, global_)
        return face_part + global_part


def build_fusion(condition: str, face_dim: int, global_dim: int, cond_dim: int) -> nn.Module | None:
    """The module that turns the inputs into the condition vector; None for "face"."""
    if check_condition(condition) == "face":
        return None
    if global_dim < 1:
        raise HypernetError(f"condition {condition!r} needs global features, but global_dim is {global_dim}")
    if condition == "global":
        return GlobalProjection(global_dim, cond_dim)
    return GatedFusion(face_dim, global_dim, cond_dim)


def fuse(fusion: nn.Module | None, face: torch.Tensor | None, global_: torch.Tensor | None) -> torch.Tensor:
    """The condition rows the denoiser reads, from already checked, normalised input rows."""
    if fusion is None:
        return face
    return fusion(face, global_)
