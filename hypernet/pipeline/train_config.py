"""What a training run is told: the TrainConfig, its presets and the --config file that overrides them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.files import read_json_object
from ..errors import HypernetError
from ..model.autoencoder import AutoencoderConfig
from ..model.condition import check_condition
from ..model.diffusion import DiffusionConfig
from ..model.prior_config import PriorConfig


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    normalizer: str = "dim"
    # "dim" scales every latent coordinate to unit variance; "global" divides all by one number, so
    # a linear autoencoder's principal coordinates keep their variances and the prior's loss weighs
    # them as the LoRAs' own error does (auto_config.py), instead of weighing each noise direction
    # like the signal.
    latent_normalizer: str = "dim"
    ae_steps: int = 3000
    ae_batch: int = 64
    ae_lr: float = 1e-3
    prior_steps: int = 6000
    prior_batch: int = 128
    prior_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    condition: str = "face"  # "face", "global" or "face+global" (condition.py)
    global_penalty: float = 0.005  # face+global: weight of the global correction's squared norm (condition.py)
    # Adaptive training (issue 19; auto_config.py): 0 trains on every training identity for the
    # fixed steps, as the presets always did. Above 0, a seeded tenth of the training identities
    # is held back for validation, the prior's validation loss is measured every that many steps
    # and training stops after `patience` measurements without improvement, keeping the best.
    validation_every: int = 0
    patience: int = 5
    offset: str = "none"  # "ridge": the prior learns the residual around a ridge map (hypernet.py)
    choose_sampling: bool = False  # pick temperature and guidance on the validation split
    # Learning-rate search (trainer.py): the prior is trained once at each of these rates, each run
    # early-stopped, and the run with the lowest validation loss is kept (prior_lr is then unused).
    # Empty: one run at prior_lr.
    prior_lr_search: tuple[float, ...] = ()

    def __post_init__(self):
        check_condition(self.condition)
        for name in ("ae_steps", "prior_steps", "ae_batch", "prior_batch", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise HypernetError(f"train config: {name} must be at least 1")
        if self.validation_every < 0 or self.patience < 1:
            raise HypernetError("train config: validation_every must not be negative and patience at least 1")
        if self.offset not in ("none", "ridge"):
            raise HypernetError(f"train config: offset must be 'none' or 'ridge', not {self.offset!r}")
        if (self.validation_every or self.offset != "none") and self.condition != "face":
            raise HypernetError("train config: validation_every and offset work with condition 'face' only")
        if self.choose_sampling and not self.validation_every:
            raise HypernetError("train config: choose_sampling needs a validation split (validation_every > 0)")
        if self.latent_normalizer not in ("dim", "global"):
            raise HypernetError(f"train config: latent_normalizer must be 'dim' or 'global', not {self.latent_normalizer!r}")
        rates_ok = all(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0
                       for lr in self.prior_lr_search)
        if self.prior_lr_search and not (0 < self.validation_every <= self.prior_steps and rates_ok):
            raise HypernetError("train config: prior_lr_search needs a validation split (validation_every > 0, "
                                "at most prior_steps) and positive learning rates")
        if self.global_penalty < 0:
            raise HypernetError("train config: global_penalty must not be negative")
        if not 0 <= self.ema_decay < 1 or self.ae_lr <= 0 or self.prior_lr <= 0 or self.warmup_steps < 0:
            raise HypernetError("train config: ema_decay must be in [0, 1), learning rates positive, warmup >= 0")

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["latent_normalizer"] == "dim":  # written only when chosen: older files stay as they were
            del values["latent_normalizer"]
        if not values["prior_lr_search"]:
            del values["prior_lr_search"]
        else:
            values["prior_lr_search"] = list(values["prior_lr_search"])
        return values

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        nested = {"autoencoder": AutoencoderConfig, "prior": PriorConfig, "diffusion": DiffusionConfig}
        try:
            values = {k: (nested[k](**v) if k in nested else v) for k, v in data.items()}
            if isinstance(values.get("prior_lr_search"), list):
                values["prior_lr_search"] = tuple(values["prior_lr_search"])
            return cls(**values)
        except TypeError as exc:
            raise HypernetError(f"invalid train config: {exc}") from exc


PRESETS: dict[str, dict] = {
    # Seconds on a CPU: for tests and the demo, not for quality.
    "tiny": dict(autoencoder=dict(kind="mlp", latent_dim=32, hidden=64, blocks=1), prior=dict(width=64, blocks=2, time_dim=32),
                 ae_steps=150, ae_batch=32, ae_lr=3e-3, prior_steps=150, prior_batch=64, prior_lr=1e-3,
                 warmup_steps=10, ema_decay=0.99, checkpoint_every=50),
    # Layouts of about 100 k values (the synthetic benchmark): about 26 minutes on a 2-core CPU.
    # AdaNorm and lr 1e-3: with ADALoRA or lr 3e-4 the prior learned the face -> latent map far
    # more slowly (benchmarks/RESULTS.md).
    "default": dict(autoencoder=dict(hidden=256), prior=dict(width=512, blocks=4, conditioning="adanorm"),
                    ae_steps=1200, prior_steps=2000, prior_batch=256, prior_lr=1e-3),
    # SDXL layouts (millions of values): the chunked autoencoder; the prior as in "default".
    "sdxl": dict(autoencoder=dict(kind="chunks", chunk=4096, token_dim=4, hidden=512, blocks=2), ae_batch=8,
                 prior=dict(width=512, blocks=4, conditioning="adanorm"), prior_lr=1e-3),
    # LoRA Diffusion on weights2weights (layout sd15-w2w, 99,648 values): the paper's dense MLP
    # VAE with residual blocks, latent 512, MSE + 0.1 KL, x0 target over 1000 cosine steps, and
    # ADALoRA conditioning. Widths, steps and learning rates are ours, sized for ~65 k identities.
    "sd15-w2w": dict(autoencoder=dict(kind="mlp", latent_dim=512, hidden=512, blocks=2, kl_weight=0.1),
                     diffusion=dict(prediction="x0", timesteps=1000), normalizer="dim",
                     prior=dict(width=1024, blocks=6, conditioning="adalora"),
                     ae_steps=20000, ae_batch=128, ae_lr=1e-3, prior_steps=60000, prior_batch=256, prior_lr=3e-4,
                     warmup_steps=500, checkpoint_every=1000),
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


AUTO = "auto"  # not a preset: settings chosen from the dataset by auto_config.py


def load_train_config(spec: str | None) -> TrainConfig:
    """A preset name, or a JSON file of overrides on top of `{"preset": NAME}` (default: "default")."""
    spec = spec or "default"
    if spec == AUTO:
        raise HypernetError("--config auto is chosen from the dataset: call auto_config.auto_train_config")
    if spec in PRESETS:
        return TrainConfig.from_dict(_merge(asdict(TrainConfig()), PRESETS[spec]))
    path = Path(spec)
    if not path.is_file():
        raise HypernetError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    overrides = read_json_object(path, "config fields")
    preset = overrides.pop("preset", "default")
    if preset not in PRESETS:
        raise HypernetError(f"{path}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict(_merge(_merge(asdict(TrainConfig()), PRESETS[preset]), overrides))
