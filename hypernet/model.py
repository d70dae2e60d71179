"""The hypernetwork as one module: normalisers, weight autoencoder and conditional prior.

Spaces: a LoRA is a canonical flat vector x [D] (see vectorize.py). The autoencoder works on
x with its factors aligned to a reference (alignment.py), then normalised per dimension; the prior works on the autoencoder's posterior mean, normalised
per latent dimension ("latents" below always mean this normalised prior space).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .alignment import align
from .autoencoder import AutoencoderConfig, build_autoencoder
from .diffusion import Diffusion, DiffusionConfig
from .errors import HypernetError
from .layout import Layout
from .prior import Denoiser, PriorConfig
from .vectorize import Normalizer


@dataclass(frozen=True)
class HypernetConfig:
    layout: Layout
    embedding_model: str
    embedding_dim: int = 512
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    condition: str = "face"  # the door to DiffLoRA's gated face + CLIP condition stays open here

    def to_dict(self) -> dict:
        return {"layout": self.layout.to_dict(), "embedding_model": self.embedding_model,
                "embedding_dim": self.embedding_dim, "condition": self.condition,
                "autoencoder": asdict(self.autoencoder), "prior": asdict(self.prior),
                "diffusion": asdict(self.diffusion)}

    @classmethod
    def from_dict(cls, data: dict) -> "HypernetConfig":
        try:
            cfg = cls(layout=Layout.from_dict(data["layout"]), embedding_model=str(data["embedding_model"]),
                      embedding_dim=int(data["embedding_dim"]), condition=str(data.get("condition", "face")),
                      autoencoder=AutoencoderConfig(**data["autoencoder"]), prior=PriorConfig(**data["prior"]),
                      diffusion=DiffusionConfig(**data["diffusion"]))
        except HypernetError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise HypernetError(f"invalid hypernet config ({type(exc).__name__}: {exc})") from exc
        if cfg.condition != "face":
            raise HypernetError(f"condition {cfg.condition!r} is not supported by this version (only 'face')")
        if not 1 <= cfg.embedding_dim <= 65536:
            raise HypernetError(f"embedding_dim {cfg.embedding_dim} is out of range")
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class Hypernet(nn.Module):
    def __init__(self, config: HypernetConfig):
        super().__init__()
        self.config = config
        num_values = config.layout.num_values
        self.vae = build_autoencoder(num_values, config.autoencoder)
        self.latent_size = self.vae.latent_size
        self.prior = Denoiser(self.latent_size, config.embedding_dim, config.diffusion.timesteps, config.prior)
        self.diffusion = Diffusion(config.diffusion)
        # Normalisers are buffers: they travel with the module and live in the checkpoint under norm.
        self.norm = nn.Module()
        for name, size in (("reference", num_values), ("mean", num_values), ("std", num_values),
                           ("latent_mean", self.latent_size),
                           ("latent_std", self.latent_size)):
            self.norm.register_buffer(name, torch.ones(size) if name.endswith("std") else torch.zeros(size))

    @property
    def layout(self) -> Layout:
        return self.config.layout

    @property
    def embedding_model(self) -> str:
        return self.config.embedding_model

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.norm.mean, self.norm.std)

    def prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        """Canonical vectors [n, D] -> aligned and normalised: what the autoencoder sees."""
        return self.normalizer.normalize(align(vectors, self.norm.reference, self.layout))

    def set_normalizers(self, vectors: Normalizer, latents: Normalizer | None = None) -> None:
        self.norm.mean.copy_(vectors.mean)
        self.norm.std.copy_(vectors.std)
        if latents is not None:
            self.norm.latent_mean.copy_(latents.mean)
            self.norm.latent_std.copy_(latents.std)

    def _device(self) -> torch.device:
        return self.norm.mean.device

    def encode_normalized(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Posterior means for normalised vectors, in the prior's normalised latent space."""
        mean, _ = self.vae.encode(x_norm)
        return (mean - self.norm.latent_mean) / self.norm.latent_std

    @torch.no_grad()
    def encode_vectors(self, vectors: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Canonical flat vectors [n, D] -> latents [n, m] (deterministic: the posterior mean)."""
        self._check_vectors(vectors)
        dev = self._device()
        return torch.cat([self.encode_normalized(self.prepare(v.to(dev).float())).cpu() for v in vectors.split(batch)])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Latents [n, m] -> flat vectors [n, D] (denormalised; aligned, not canonical, factors), on the CPU."""
        if latents.dim() != 2 or latents.shape[1] != self.latent_size:
            raise HypernetError(f"latents must have shape [n, {self.latent_size}], not {tuple(latents.shape)}")
        dev = self._device()
        out = []
        for z in latents.split(batch):
            z = z.to(dev).float() * self.norm.latent_std + self.norm.latent_mean
            out.append((self.vae.decode(z) * self.norm.std + self.norm.mean).cpu())
        return torch.cat(out)

    def _check_vectors(self, vectors: torch.Tensor) -> None:
        if vectors.dim() != 2 or vectors.shape[1] != self.layout.num_values:
            raise HypernetError(f"LoRA vectors must have shape [n, {self.layout.num_values}] for layout "
                                f"{self.layout.fingerprint}, not {tuple(vectors.shape)}: they belong to another layout")

    def parameter_counts(self) -> dict[str, int]:
        return {"autoencoder": sum(p.numel() for p in self.vae.parameters()),
                "prior": sum(p.numel() for p in self.prior.parameters())}

    def describe(self) -> str:
        cfg, counts = self.config, self.parameter_counts()
        ranks = ",".join(str(r) for r in sorted(cfg.layout.ranks))
        return (f"base model: {cfg.layout.base_model}\n"
                f"layout: {len(cfg.layout)} modules, rank {ranks}, {cfg.layout.num_values:,} values "
                f"({cfg.layout.fingerprint})\n"
                f"face model: {cfg.embedding_model}\n"
                f"autoencoder: {cfg.autoencoder.kind}, latent {self.latent_size}, {counts['autoencoder']:,} parameters\n"
                f"prior: {cfg.prior.conditioning}, {cfg.diffusion.prediction}-prediction, "
                f"{counts['prior']:,} parameters")
