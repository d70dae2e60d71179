"""Samplers that answer with one latent per condition instead of running the prior's DDIM:
what `train --config auto` (hypernet/pipeline/auto_config.py) falls back to when, on a
validation split of the training identities, the trained prior does worse than a simpler map
(issue 19, ours). On collections whose LoRAs are mostly per-identity noise the prior learns
each training identity by heart, and a regression or a neighbourhood average of the training
latents generalises better.

- "prior": the trained prior (DDIM), as every checkpoint before this one.
- "ridge": the ridge map face -> latent that offset "ridge" stores (hypernet.py), without the
  prior's residual: the regression baseline itself, sampled from the checkpoint.
- "ridge-lora": ridge regression from the face to the LoRA vector itself (evaluate's baseline),
  bypassing the autoencoder, whose reconstruction error otherwise bounds every latent answer.
  Stored low-rank: LoRA = (face @ norm.ridge_in) @ norm.ridge_out + norm.ridge_bias, with
  ridge_in [E, rank], ridge_out [rank, D]; its "latents" are the rank coefficients.
- "kernel": a kernel conditional mean: softmax(cos(face, key) / tau) over the k most similar
  training faces, averaging their latents. k 1 is the nearest training identity.

The point samplers ignore the seed: every seed gives the same LoRA (diversity 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..common.messages import brief
from ..errors import HypernetError

SAMPLERS = ("prior", "ridge", "ridge-lora", "kernel")


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = "prior"
    k: int = 0  # kernel: neighbours averaged
    tau: float = 0.0  # kernel: softmax temperature on cosine similarity
    rows: int = 0  # kernel: training identities stored (norm.kernel_keys / kernel_latents)
    rank: int = 0  # ridge-lora: rank of the stored map

    def __post_init__(self):
        if self.kind not in SAMPLERS:
            raise HypernetError(f"sampler must be one of {SAMPLERS}, not {brief(self.kind)}")
        wanted = {"kernel": ("k", "tau", "rows"), "ridge-lora": ("rank",)}.get(self.kind, ())
        unwanted = [name for name in ("k", "tau", "rows", "rank") if name not in wanted and getattr(self, name)]
        if unwanted:
            raise HypernetError(f"sampler {self.kind!r} takes no {', '.join(unwanted)}")
        for name in (n for n in wanted if n != "tau"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
                raise HypernetError(f"{self.kind} sampler: {name} must be a whole number of at least 1, "
                                    f"not {brief(value)}")
        if self.kind != "kernel":
            return
        if self.k > self.rows:
            raise HypernetError(f"kernel sampler: k {self.k} is more than its {self.rows} stored identities")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0 < self.tau <= 100:
            raise HypernetError(f"kernel sampler: tau must be a number in (0, 100], not {brief(self.tau)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "SamplerConfig":
        if not isinstance(data, dict):
            raise HypernetError(f"sampler must be a JSON object, not {brief(data)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a field this version does not know
            raise HypernetError(f"invalid sampler config ({exc})") from None


def kernel_mean(cond: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """[n, m]: for each condition row, the softmax(similarity / tau)-weighted mean of the values
    of its k most similar keys (rows L2-normalised, so the similarity is the cosine)."""
    similarity = cond @ keys.T
    top, index = similarity.topk(min(k, keys.shape[0]), dim=1)
    weights = torch.softmax(top / tau, dim=1)
    return (weights.unsqueeze(2) * values[index]).sum(1)
