"""The knobs that turn `synth` into a family of generators (issue 19): how the LoRA depends on
the embedding, the factor scale, the alpha written into the files, and the layout's rank and
module count. Today's `synth` is the member with every knob at its default.

Dependences (the features that a fixed random linear map turns into each module's factors):

    sincos        [sin z, cos z] of the manifold coordinates z (today's `synth`): smooth, mildly
                  nonlinear in the embedding (a linear fit of z already explains much of it)
    linear        z itself: the factors are exactly linear in the embedding; delta W = up @ down
                  is then quadratic in it
    linear-delta  z drives only the up factors, the down factors are a fixed base: delta W is
                  exactly linear in the embedding
    fourier       random Fourier features sin(w . z + phi) with w ~ N(0, frequency^2 / dim):
                  smooth, but strongly nonlinear for frequency >= 2, so neither a linear fit nor
                  the nearest embedding recovers it

Every feature set has mean square 0.5, as sin/cos do, so the noiseless factor entries have a
standard deviation of about sqrt(1.5) x the factor scale in every member, and `noise` is the
per-identity noise's standard deviation in units of that scale.

Alpha (what the files carry; delta W is never changed by it, readers must fold it):

    random        per identity and module, one of {1, r/2, r, 2r} (today's `synth`)
    per-module    per module, one of {1, r/2, r, 2r}, the same for every identity (a collection
                  trained with one recipe)
    a number      that alpha in every module of every file (e.g. 27, weights2weights' alpha)

The collection of issue 19 (24 SDXL attention modules at rank 2, 122,880 values per LoRA, 1,200
identities, nonlinear through an 8-dimensional manifold, per-identity noise 25 %; on it the
nearest-embedding baseline's held-out top-1 is 0.025 and the noiseless LoRAs' 1.0):

    python -m hypernet synth --layout sdxl-attn-r4 --modules 24 --rank 2 --identities 1200 \
        --dependence fourier --manifold-dim 8 --noise 0.25 --truth --out issue19
"""
from __future__ import annotations

import math

import torch

from ..common.tensors import seeded_generator
from ..errors import HypernetError
from ..lora.layout import Layout

DEPENDENCES = ("sincos", "linear", "linear-delta", "fourier")
ALPHA_MODES = ("random", "per-module")
DEFAULT_FREQUENCY = 2.0


def check_family(dependence: str, frequency: float, factor_scale: float | None, alpha: str) -> None:
    if dependence not in DEPENDENCES:
        raise HypernetError(f"--dependence must be one of {', '.join(DEPENDENCES)}, not {dependence!r}")
    if not frequency > 0:
        raise HypernetError(f"--frequency must be positive, not {frequency}")
    if factor_scale is not None and not 0 < factor_scale < math.inf:
        raise HypernetError(f"--factor-scale must be a positive number, not {factor_scale}")
    if alpha not in ALPHA_MODES:
        try:
            value = float(alpha)
        except ValueError:
            value = -1.0
        if not 0 < value < math.inf:
            raise HypernetError(f"--alpha must be {' or '.join(ALPHA_MODES)} or a positive number, not {alpha!r}")


def family_layout(layout: Layout, rank: int | None = None, modules: int | None = None) -> Layout:
    """`layout` at another rank (alpha = rank) and/or cut to `modules` modules spread evenly over it
    (first and last kept), so a small module count still spans every block of the UNet."""
    if modules is not None:
        total = len(layout.modules)
        if not 1 <= modules <= total:
            raise HypernetError(f"--modules must be between 1 and the layout's {total} modules, not {modules}")
        picks = [0] if modules == 1 else [round(i * (total - 1) / (modules - 1)) for i in range(modules)]
        layout = Layout(tuple(layout.modules[i] for i in picks), layout.base_model)
    if rank is not None:
        if not 1 <= rank <= 64:
            raise HypernetError(f"--rank must be between 1 and 64, not {rank}")
        layout = layout.with_rank(rank)
    return layout


def dependence_features(z: torch.Tensor, dependence: str, frequency: float, seed: int, purpose: str) -> torch.Tensor:
    """Features [n, F] of manifold coordinates z [n, d] (z ~ N(0, 1) per coordinate) for a
    non-default dependence, scaled to mean square 0.5 like [sin z, cos z]."""
    if dependence in ("linear", "linear-delta"):
        return z / math.sqrt(2.0)
    if dependence == "fourier":
        gen = seeded_generator(seed, purpose, "fourier")
        dim = z.shape[1]
        freqs = torch.randn(dim, 2 * dim, generator=gen) * (frequency / math.sqrt(dim))
        phases = torch.rand(2 * dim, generator=gen) * (2 * math.pi)
        return torch.sin(z @ freqs + phases)
    raise HypernetError(f"no feature map for dependence {dependence!r}")


def module_alpha(alpha: str, seed: int, module: str, rank: int) -> float | None:
    """The alpha every file gets for this module, or None when it is drawn per identity ("random")."""
    if alpha == "random":
        return None
    if alpha == "per-module":
        choices = [1.0, rank / 2, float(rank), 2.0 * rank]
        return choices[int(torch.randint(4, (1,), generator=seeded_generator(seed, "alpha", module)))]
    return float(alpha)
