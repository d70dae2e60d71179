"""What the prior is conditioned on: the face embedding, global image features, or both fused.

DiffLoRA (arXiv 2408.06740) fuses ArcFace face features with global image features from a
CLIP image encoder through a mixture-of-experts style gate. The paper's gate equations are
not public; the ones below are OURS.

With f the L2-normalised face embedding [E], g the L2-normalised global features [G],
u = [f, g] their concatenation and C the condition size the denoiser reads (C = E):

    experts   e_face = W_f f + b_f,   e_global = W_g g + b_g,   e_joint = W_u u + b_u   (each [C])
    gate      p = softmax(W_2 silu(W_1 u + b_1) + b_2)                                  ([3], sums to 1)
    condition c = unit(p_face e_face + p_global e_global + p_joint e_joint)

and for condition "global" simply c = unit(W_g g + b_g). `unit(x)` is LayerNorm without
affine parameters divided by sqrt(C): the fused vector gets the unit norm a face embedding
has, so the denoiser's condition pathway sees the same scale in every mode. For condition
"face" there is no fusion module at all: the face embedding is the condition exactly as
before this module existed (same parameters, same outputs).

Classifier-free guidance is unchanged: the denoiser's learned null condition replaces the
fused vector c, not its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import HypernetError

CONDITIONS = ("face", "global", "face+global")
GATE_HIDDEN = 64  # ours: the gate only has to pick between three experts


def check_condition(condition: str) -> str:
    if condition not in CONDITIONS:
        raise HypernetError(f"condition must be one of {CONDITIONS}, not {condition!r}")
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
    """Condition "face+global": a softmax gate over three projected experts (equations above)."""

    EXPERTS = ("face", "global", "joint")

    def __init__(self, face_dim: int, global_dim: int, cond_dim: int):
        super().__init__()
        self.face_expert = nn.Linear(face_dim, cond_dim)
        self.global_expert = nn.Linear(global_dim, cond_dim)
        self.joint_expert = nn.Linear(face_dim + global_dim, cond_dim)
        self.gate = nn.Sequential(nn.Linear(face_dim + global_dim, GATE_HIDDEN), nn.SiLU(),
                                  nn.Linear(GATE_HIDDEN, len(self.EXPERTS)))

    def gate_weights(self, face: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """[n, 3] mixture weights over (face, global, joint); each row sums to 1."""
        return torch.softmax(self.gate(torch.cat([face, global_], dim=-1)), dim=-1)

    def forward(self, face: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([face, global_], dim=-1)
        experts = torch.stack([self.face_expert(face), self.global_expert(global_), self.joint_expert(joint)], dim=1)
        weights = self.gate_weights(face, global_)
        return _unit((weights.unsqueeze(-1) * experts).sum(dim=1))


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
