"""The hypernetwork as one module: normalisers, weight autoencoder and conditional prior.

Spaces: a LoRA is a canonical flat vector x [D] (see vectorize.py). The autoencoder works on
x with its factors aligned to a reference (alignment.py), then normalised per dimension; the prior works on the autoencoder's posterior mean, normalised
per latent dimension ("latents" below always mean this normalised prior space).

Two sampling settings that `train --config auto` chooses on a validation split (ours, beyond
the papers; hypernet/pipeline/auto_config.py) live in the config, because they change what a
sample is: `offset` "ridge" means the prior models the residual of the latent around a linear
(ridge) map of the face embedding, stored as norm.offset_weight [E, m] and norm.offset_bias [m],
which sampling adds back; `temperature` scales the starting noise of DDIM (1: the prior's own
spread; 0: its deterministic, mean-like answer); `guidance` is the classifier-free guidance
sampling uses when its caller gives none. A further one, `sampler`, says what answers a face
at all: the prior (the default), or a point sampler that replaces it where the prior did worse
on the validation split (point_samplers.py: the ridge map alone, ridge regression to the LoRA
itself, or a kernel mean of training latents; their tensors live under norm.). Each is
written only when it differs from its default ("none", 1.0, 3.0, "prior"), so older checkpoints
keep their config JSON and load unchanged.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from ..lora.alignment import align
from .autoencoder import AutoencoderConfig, build_autoencoder
from .condition import build_fusion, check_condition, fuse, needs_global
from ..encoders.encoder_info import check_encoder_info
from .diffusion import Diffusion, DiffusionConfig
from ..errors import HypernetError
from ..lora.layout import Layout
from .denoisers import build_denoiser
from ..common.messages import brief, one_line
from .point_samplers import SamplerConfig, kernel_mean
from .prior_config import PriorConfig
from ..lora.vectorize import Normalizer

OFFSETS = ("none", "ridge")
MAX_IDENTITY_SCALE = 10.0
# Classifier-free guidance of a checkpoint that did not choose one: what benchmarks/RESULTS.md
# measured its tables with, and the Sample LoRA node's widget default.
DEFAULT_GUIDANCE = 3.0
MAX_GUIDANCE = 10.0
POINT_BUFFERS = ("kernel_keys", "kernel_latents", "ridge_in", "ridge_out", "ridge_bias")


@dataclass(frozen=True)
class HypernetConfig:
    layout: Layout
    embedding_model: str
    embedding_dim: int = 512
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # "face" (LoRA Diffusion), "global" or "face+global" (DiffLoRA's gated fusion, condition.py).
    condition: str = "face"
    global_dim: int = 0  # size of the global image features; 0 when the condition has none
    # Identity of the image encoder that made the global features: {"name", "dim", "fingerprint"}
    # (global_features.EncoderInfo.to_dict()); features of another encoder are refused.
    global_encoder: dict | None = None
    offset: str = "none"  # "none" or "ridge" (see the module docstring)
    temperature: float = 1.0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # Ours: decoded LoRAs are moved away from the training mean by this factor, mean + s * (v - mean)
    # (on aligned factors), as classifier-free guidance extrapolates from the unconditional answer.
    # A hypernet whose autoencoder keeps only what identities share answers with a weaker update
    # than a trained LoRA; training leaves 1, `python -m hypernet identity-scale` sets a measured one.
    identity_scale: float = 1.0
    # The guidance `train --config auto` chose on the validation identities; callers that are not
    # given one sample with it (sampling.sample_latents).
    guidance: float = DEFAULT_GUIDANCE

    def __post_init__(self):
        check_condition(self.condition)
        if self.offset not in OFFSETS:
            raise HypernetError(f"offset must be one of {OFFSETS}, not {brief(self.offset)}")
        if self.offset != "none" and self.condition != "face":
            raise HypernetError(f"offset {self.offset!r} needs condition 'face', not {brief(self.condition)}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature <= 1:
            raise HypernetError(f"temperature must be a number between 0 and 1, not {brief(self.temperature)}")
        if isinstance(self.identity_scale, bool) or not isinstance(self.identity_scale, (int, float)) \
                or not 0 < self.identity_scale <= MAX_IDENTITY_SCALE:
            raise HypernetError(f"identity_scale must be a number above 0 and at most {MAX_IDENTITY_SCALE}, "
                                f"not {brief(self.identity_scale)}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not 0 <= self.guidance <= MAX_GUIDANCE:
            raise HypernetError(f"guidance must be a number between 0 and {MAX_GUIDANCE:g}, not {brief(self.guidance)}")
        if self.sampler.kind == "ridge" and self.offset != "ridge":
            raise HypernetError("sampler 'ridge' needs offset 'ridge': the ridge map is the offset")
        if self.sampler.kind == "kernel" and self.condition != "face":
            raise HypernetError(f"sampler 'kernel' needs condition 'face', not {brief(self.condition)}")
        if not 1 <= self.embedding_dim <= 65536:
            raise HypernetError(f"embedding_dim {brief(self.embedding_dim)} is out of range")
        if not needs_global(self.condition):
            if self.global_dim or self.global_encoder is not None:
                raise HypernetError(f"condition {self.condition!r} takes no global features, but the config "
                                    f"has global_dim {brief(self.global_dim)} and encoder {brief(self.global_encoder)}")
            return
        if not 1 <= self.global_dim <= 65536:
            raise HypernetError(f"condition {self.condition!r} needs global_dim between 1 and 65536, "
                                f"not {brief(self.global_dim)}")
        encoder = check_encoder_info(self.global_encoder, f"condition {self.condition!r}")
        if encoder["dim"] != self.global_dim:
            raise HypernetError(f"global_encoder {encoder['name']} gives {encoder['dim']} values but global_dim "
                                f"is {self.global_dim}")

    def to_dict(self) -> dict:
        data = {"layout": self.layout.to_dict(), "embedding_model": self.embedding_model,
                "embedding_dim": self.embedding_dim, "condition": self.condition,
                "autoencoder": asdict(self.autoencoder), "prior": self.prior.to_dict(),
                "diffusion": asdict(self.diffusion)}
        # Face-only configs are written exactly as before global features existed.
        if needs_global(self.condition):
            data.update(global_dim=self.global_dim, global_encoder=dict(self.global_encoder))
        if self.offset != "none":
            data["offset"] = self.offset
        if self.temperature != 1.0:
            data["temperature"] = self.temperature
        if self.sampler.kind != "prior":
            data["sampler"] = self.sampler.to_dict()
        if self.identity_scale != 1.0:
            data["identity_scale"] = self.identity_scale
        if self.guidance != DEFAULT_GUIDANCE:
            data["guidance"] = self.guidance
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "HypernetConfig":
        try:
            encoder = data.get("global_encoder")
            return cls(layout=Layout.from_dict(data["layout"]), embedding_model=str(data["embedding_model"]),
                       embedding_dim=int(data["embedding_dim"]), condition=str(data.get("condition", "face")),
                       global_dim=int(data.get("global_dim", 0)),
                       global_encoder=dict(encoder) if isinstance(encoder, dict) else encoder,
                       offset=data.get("offset", "none"), temperature=data.get("temperature", 1.0),
                       sampler=SamplerConfig.from_dict(data.get("sampler", {})),
                       identity_scale=data.get("identity_scale", 1.0),
                       guidance=data.get("guidance", DEFAULT_GUIDANCE),
                       autoencoder=AutoencoderConfig(**data["autoencoder"]), prior=PriorConfig(**data["prior"]),
                       diffusion=DiffusionConfig(**data["diffusion"]))
        except HypernetError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            # OverflowError: int() of a JSON number such as 1e999, which Python reads as inf;
            # AttributeError: a JSON list or number where an object belongs.
            raise HypernetError(f"invalid hypernet config ({type(exc).__name__}: {one_line(str(exc), 200)})") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class Hypernet(nn.Module):
    def __init__(self, config: HypernetConfig):
        super().__init__()
        self.config = config
        num_values = config.layout.num_values
        self.vae = build_autoencoder(num_values, config.autoencoder)
        self.latent_size = self.vae.latent_size
        # The condition vector the prior reads has the face embedding's size in every mode.
        fusion = build_fusion(config.condition, config.embedding_dim, config.global_dim, config.embedding_dim)
        self.prior = build_denoiser(self.latent_size, config.embedding_dim, config.diffusion.timesteps, config.prior,
                                    fusion)
        self.diffusion = Diffusion(config.diffusion)
        # Normalisers are buffers: they travel with the module and live in the checkpoint under norm.
        self.norm = nn.Module()
        for name, size in (("reference", num_values), ("mean", num_values), ("std", num_values),
                           ("latent_mean", self.latent_size),
                           ("latent_std", self.latent_size)):
            self.norm.register_buffer(name, torch.ones(size) if name.endswith("std") else torch.zeros(size))
        if config.offset == "ridge":
            self.norm.register_buffer("offset_weight", torch.zeros(config.embedding_dim, self.latent_size))
            self.norm.register_buffer("offset_bias", torch.zeros(self.latent_size))
        self._sampler_buffers(config.sampler)

    def _sampler_buffers(self, sampler: SamplerConfig) -> None:
        """Register the point sampler's tensors (zeros; training or loading fills them), drop others'."""
        sizes = {"kernel": {"kernel_keys": (sampler.rows, self.config.embedding_dim),
                            "kernel_latents": (sampler.rows, self.latent_size)},
                 "ridge-lora": {"ridge_in": (self.config.embedding_dim, sampler.rank),
                                "ridge_out": (sampler.rank, self.config.layout.num_values),
                                "ridge_bias": (self.config.layout.num_values,)}}
        for name in POINT_BUFFERS:
            self.norm._buffers.pop(name, None)
        for name, shape in sizes.get(sampler.kind, {}).items():
            self.norm.register_buffer(name, torch.zeros(shape, device=self.norm.mean.device))

    @property
    def layout(self) -> Layout:
        return self.config.layout

    @property
    def embedding_model(self) -> str:
        return self.config.embedding_model

    @property
    def condition(self) -> str:
        return self.config.condition

    def condition_vectors(self, face: torch.Tensor | None, global_: torch.Tensor | None) -> torch.Tensor:
        """Checked, L2-normalised input rows -> the condition rows the prior reads (fused if needed)."""
        return fuse(self.prior.fusion, face, global_)

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.norm.mean, self.norm.std)

    def latent_offset(self, cond: torch.Tensor) -> torch.Tensor | None:
        """What sampling adds to the prior's latents for condition rows [n, E]; None without an offset."""
        if self.config.offset == "none":
            return None
        return cond @ self.norm.offset_weight + self.norm.offset_bias

    def point_latents(self, cond: torch.Tensor) -> torch.Tensor | None:
        """The point sampler's latents for condition rows [n, E]; None when the prior samples."""
        sampler = self.config.sampler
        if sampler.kind == "ridge":
            return self.latent_offset(cond)
        if sampler.kind == "kernel":
            return kernel_mean(cond, self.norm.kernel_keys, self.norm.kernel_latents, sampler.k, sampler.tau)
        if sampler.kind == "ridge-lora":
            return cond @ self.norm.ridge_in
        return None

    @property
    def sample_size(self) -> int:
        """Width of what sample_latents returns: the latent size, or the rank of a ridge-lora map."""
        return self.config.sampler.rank if self.config.sampler.kind == "ridge-lora" else self.latent_size

    @torch.no_grad()
    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """What sample_latents returned [n, sample_size] -> flat vectors [n, D] on the CPU (aligned factors)."""
        if self.config.sampler.kind != "ridge-lora":
            vectors = self.decode_latents(samples)
        else:
            if samples.dim() != 2 or samples.shape[1] != self.sample_size:
                raise HypernetError(f"samples must have shape [n, {self.sample_size}], not {tuple(samples.shape)}")
            samples = samples.to(self._device()).float()
            vectors = (samples @ self.norm.ridge_out + self.norm.ridge_bias).cpu()
        scale = self.config.identity_scale
        if scale == 1.0:
            return vectors
        mean = self.norm.mean.cpu()
        return mean + scale * (vectors - mean)

    def use_sampler(self, sampler: SamplerConfig, **tensors: torch.Tensor) -> None:
        """Switch what answers a face: the config, and the point sampler's tensors by name
        (kernel: kernel_keys, kernel_latents; ridge-lora: ridge_in, ridge_out, ridge_bias)."""
        self.config = replace(self.config, sampler=sampler)  # validates the combination
        self._sampler_buffers(sampler)
        for name, tensor in tensors.items():
            getattr(self.norm, name).copy_(tensor)

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
                f"condition: {cfg.condition}"
                + (f" (global features: {cfg.global_encoder['name']}, {cfg.global_dim} values)\n"
                   if cfg.global_encoder else "\n") +
                f"autoencoder: {cfg.autoencoder.kind}, latent {self.latent_size}, {counts['autoencoder']:,} parameters\n"
                f"prior: {cfg.prior.kind} {cfg.prior.conditioning}, {cfg.diffusion.prediction}-prediction, "
                f"{counts['prior']:,} parameters"
                + (f"\nsamples with: {cfg.sampler.kind} (chosen in training on validation identities; the prior "
                   "is not used, every seed gives the same LoRA)" if cfg.sampler.kind != "prior" else "")
                + (f"\nguidance: {cfg.guidance:g} (chosen in training on validation identities; set Sample LoRA's "
                   "guidance to it)" if cfg.guidance != DEFAULT_GUIDANCE and cfg.sampler.kind == "prior" else "")
                + (f"\nidentity scale: {cfg.identity_scale:g} (decoded LoRAs {cfg.identity_scale:g} times as far from "
                   "the mean LoRA)" if cfg.identity_scale != 1.0 else ""))
