"""`python -m hypernet train`: weight autoencoder first, then the conditional prior on its latents.

Determinism: every step draws its batch and noise from a generator seeded by (seed, phase,
step), and the learning rate is a function of the step, so a run interrupted and resumed
from its state file ends bit for bit where an uninterrupted run ends (same device type).

Files: OUT (the hypernet, written once at the end, atomically) and OUT.resume (raw and EMA
weights, optimizer state, phase and step; written atomically every `checkpoint_every` steps
and removed when training finishes). Neither is ever half-written.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm import tqdm

from ..lora.alignment import align, reference_factors
from ..model.autoencoder import AutoencoderConfig, delta_sq_error, kl_divergence
from ..model.checkpoint import read_header, save_hypernet
from ..model.condition import GatedFusion, check_condition, needs_global
from ..common.tensors import l2_normalize, seeded_generator
from ..data.dataset import LoraDataset, open_dataset
from ..model.diffusion import DiffusionConfig
from ..errors import HypernetError
from ..common.files import read_json_object, save_safetensors_atomic
from ..model.hypernet import Hypernet, HypernetConfig
from ..model.prior_config import PriorConfig
from ..lora.vectorize import Normalizer

STATE_FORMAT = "lora-hypernet-train-state"
STATE_VERSION = 1
PHASES = ("autoencoder", "prior")
GRAD_CLIP = 1.0
FAN_IN_REFERENCE = 1024


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    normalizer: str = "dim"
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

    def __post_init__(self):
        check_condition(self.condition)
        for name in ("ae_steps", "prior_steps", "ae_batch", "prior_batch", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise HypernetError(f"train config: {name} must be at least 1")
        if self.global_penalty < 0:
            raise HypernetError("train config: global_penalty must not be negative")
        if not 0 <= self.ema_decay < 1 or self.ae_lr <= 0 or self.prior_lr <= 0 or self.warmup_steps < 0:
            raise HypernetError("train config: ema_decay must be in [0, 1), learning rates positive, warmup >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        nested = {"autoencoder": AutoencoderConfig, "prior": PriorConfig, "diffusion": DiffusionConfig}
        try:
            values = {k: (nested[k](**v) if k in nested else v) for k, v in data.items()}
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
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def load_train_config(spec: str | None) -> TrainConfig:
    """A preset name, or a JSON file of overrides on top of `{"preset": NAME}` (default: "default")."""
    spec = spec or "default"
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


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def data_fingerprint(dataset: LoraDataset, condition: str = "face") -> str:
    ids = dataset.ids("train")
    parts = [dataset.layout.fingerprint, dataset.embedding_model, ids]
    if needs_global(condition):  # face-only runs keep the fingerprint they always had
        parts.append(dataset.global_encoder)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def global_inputs(dataset: LoraDataset, condition: str, split: str) -> torch.Tensor | None:
    """The split's global image features when `condition` needs them, else None; a clear error
    when the dataset has none or they are broken."""
    if not needs_global(condition):
        return None
    if dataset.global_encoder is None:
        raise HypernetError(f"condition {condition!r} needs global image features, but {dataset.path} has none: "
                            "rebuild it from identity folders with global.safetensors files, or with "
                            "--global-encoder FILE --global-arch NAME (or train with condition 'face')")
    features = dataset.load_global(split)
    if not bool(torch.isfinite(features).all()):
        raise HypernetError(f"{dataset.path}: the {split} global image features contain NaN or infinite values; "
                            "rebuild the dataset")
    return l2_normalize(features)


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


@dataclass
class TrainState:
    model: Hypernet
    ema: dict[str, torch.Tensor]
    phase: str = "autoencoder"
    step: int = 0
    optimizer_state: dict | None = None
    losses: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, dataset: LoraDataset, cfg: TrainConfig, device: torch.device, out: Path,
                 progress: bool = True, on_step: Callable[[str, int], None] | None = None):
        self.dataset, self.cfg, self.device, self.out = dataset, cfg, device, out
        self.progress, self.on_step = progress, on_step
        vectors, embeddings, ids = dataset.load("train")
        if len(ids) < 2:
            raise HypernetError(f"{dataset.path} has {len(ids)} training identities; training needs at least 2 "
                                "(build a dataset from more identities or a smaller held-out fraction)")
        bad = [ids[i] for i in torch.nonzero(~torch.isfinite(vectors).all(1)).flatten().tolist()]
        if bad:
            raise HypernetError(f"{dataset.path}: the LoRA of identity {bad[0]} contains NaN or infinite values; "
                                "rebuild the dataset without it")
        self.reference = reference_factors(vectors, dataset.layout)
        self.vectors = align(vectors, self.reference, dataset.layout)  # aligned once: each row's alignment is fixed
        self.embeddings = l2_normalize(embeddings)
        # The checkpoint records the dataset's encoder identity; sampling and evaluation refuse
        # features of any other encoder.
        self.global_features = global_inputs(dataset, cfg.condition, "train")
        uses_global = self.global_features is not None
        self.hconfig = HypernetConfig(layout=dataset.layout, embedding_model=dataset.embedding_model,
                                      embedding_dim=dataset.embedding_dim, autoencoder=cfg.autoencoder,
                                      prior=cfg.prior, diffusion=cfg.diffusion, condition=cfg.condition,
                                      global_dim=dataset.global_dim if uses_global else 0,
                                      global_encoder=dataset.global_encoder if uses_global else None)
        self.fingerprint = data_fingerprint(dataset, cfg.condition)
        self.state_file = state_path(out)
        self.saved_step: tuple[str, int] | None = None

    # --- state -------------------------------------------------------------------------------

    def fresh_state(self) -> TrainState:
        torch.manual_seed(self.cfg.seed)  # weight initialisation
        model = Hypernet(self.hconfig).to(self.device)
        model.norm.reference.copy_(self.reference)
        model.set_normalizers(Normalizer.fit(self.vectors, self.dataset.layout, self.cfg.normalizer))
        return TrainState(model, ema={})

    def save_state(self, state: TrainState, optimizer: torch.optim.Optimizer) -> None:
        tensors = {f"model.{k}": v.detach().cpu() for k, v in state.model.state_dict().items()}
        tensors.update({f"ema.{k}": v.cpu() for k, v in state.ema.items()})
        opt = optimizer.state_dict()
        for index, values in opt["state"].items():
            for key, value in values.items():
                tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).cpu()
        metadata = {"format": STATE_FORMAT, "format_version": str(STATE_VERSION), "phase": state.phase,
                    "step": str(state.step), "data": self.fingerprint, "train_config": json.dumps(self.cfg.to_dict()),
                    "hypernet_config": self.hconfig.to_json(), "param_groups": json.dumps(opt["param_groups"]),
                    "losses": json.dumps(state.losses)}
        save_safetensors_atomic(tensors, self.state_file, metadata)
        self.saved_step = (state.phase, state.step)

    def load_state(self) -> TrainState:
        path = self.state_file
        if not path.is_file():
            raise HypernetError(f"--resume: there is no interrupted run to resume ({path} does not exist)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise HypernetError(f"{path} cannot be read ({exc}); delete it and train from the start") from exc
        if meta.get("format") != STATE_FORMAT or meta.get("format_version") != str(STATE_VERSION):
            raise HypernetError(f"{path} is not a training state this version can resume; delete it to start over")
        if meta.get("data") != self.fingerprint:
            raise HypernetError(f"{path} belongs to a run on another dataset (other identities, layout or face "
                                "model); resume with the same --data or delete it to start over")
        if json.loads(meta["hypernet_config"]) != self.hconfig.to_dict():
            raise HypernetError(f"{path} was trained with another model config (autoencoder, prior or diffusion); "
                                "only step counts, learning rates and checkpoint_every may change on --resume")
        state = self.fresh_state()
        try:
            state.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as exc:
            raise HypernetError(f"{path} does not fit the model ({exc}); delete it to start over") from exc
        state.ema = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.")}
        state.phase, state.step = meta["phase"], int(meta["step"])
        state.losses = json.loads(meta.get("losses", "{}"))
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        state.optimizer_state = {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
        self.saved_step = (state.phase, state.step)
        return state

    # --- phases --------------------------------------------------------------------------------

    def _optimizer(self, params, lr: float, state: TrainState) -> torch.optim.Optimizer:
        # Adam moves every weight by about lr per step, so a layer reading D = 100 k inputs would
        # move its outputs by about lr * D: it diverges at learning rates that suit the rest.
        # Scaling such layers' rate by FAN_IN_REFERENCE / fan_in (as muP does) fixes that.
        groups = [{"params": [p], "lr_scale": min(1.0, FAN_IN_REFERENCE / p.shape[1]) if p.dim() == 2 else 1.0}
                  for p in params]
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=self.cfg.weight_decay)
        if state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
            for values in optimizer.state.values():  # loaded state lands on the CPU
                for key, value in values.items():
                    if torch.is_tensor(value) and key != "step":
                        values[key] = value.to(self.device)
            state.optimizer_state = None
        return optimizer

    @staticmethod
    def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], GRAD_CLIP)
        optimizer.step()

    def _check_loss(self, loss: torch.Tensor, phase: str, step: int) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            if self.saved_step is not None:
                kept = f"the last good state ({self.saved_step[0]} step {self.saved_step[1]}) is in {self.state_file}"
            else:
                kept = "no state had been saved yet"
            raise HypernetError(f"training stopped: the {phase} loss became {value} at {phase} step {step}; {kept}. "
                                f"Lower the {'ae' if phase == 'autoencoder' else 'prior'}_lr in a --config file "
                                "and run again with --resume.")
        return value

    def _bar(self, phase: str, total: int, initial: int):
        return tqdm(total=total, initial=initial, desc=phase, unit="step", disable=not self.progress,
                    file=sys.stderr, dynamic_ncols=True)

    def train_autoencoder(self, state: TrainState) -> None:
        cfg, model = self.cfg, state.model
        vae = model.vae.train()
        optimizer = self._optimizer(vae.parameters(), cfg.ae_lr, state)
        layout = self.dataset.layout
        mean, std = model.norm.mean, model.norm.std
        # The weight-space term is relative to the data's own delta-W energy, so its weight is scale-free.
        delta_scale = None
        if cfg.autoencoder.delta_weight > 0:
            sample = self.vectors[:256].to(self.device)
            delta_scale = float(delta_sq_error(sample, torch.zeros_like(sample), layout).mean()) or 1.0
        with self._bar("autoencoder", cfg.ae_steps, state.step) as bar:
            while state.step < cfg.ae_steps:
                step = state.step
                gen = seeded_generator(cfg.seed, "autoencoder", step)
                idx = torch.randint(len(self.vectors), (cfg.ae_batch,), generator=gen)
                x = self.vectors[idx].to(self.device)
                x_norm = (x - mean) / std
                mu, logvar = vae.encode(x_norm)
                eps = torch.randn(mu.shape, generator=gen).to(self.device)
                recon = vae.decode(mu + (0.5 * logvar).exp() * eps)
                mse = F.mse_loss(recon, x_norm)
                loss = mse + cfg.autoencoder.kl_weight * kl_divergence(mu, logvar)
                if delta_scale is not None:
                    delta = delta_sq_error(recon * std + mean, x, layout).mean() / delta_scale
                    loss = loss + cfg.autoencoder.delta_weight * delta
                value = self._check_loss(loss, "autoencoder", step)
                self._update(optimizer, loss, learning_rate(cfg.ae_lr, step, cfg.ae_steps, cfg.warmup_steps))
                state.step += 1
                state.losses["autoencoder_mse"] = float(mse.detach())
                self._after_step(state, optimizer, bar, value)
        state.phase, state.step = "prior", 0
        vae.eval()

    def fit_latent_normalizer(self, model: Hypernet) -> torch.Tensor:
        """Posterior means of the training set, then the per-dimension latent normaliser."""
        with torch.no_grad():
            means = torch.cat([model.vae.encode((v.to(self.device) - model.norm.mean) / model.norm.std)[0].cpu()
                               for v in self.vectors.split(64)])
        normalizer = Normalizer.fit(means)
        model.norm.latent_mean.copy_(normalizer.mean)
        model.norm.latent_std.copy_(normalizer.std)
        return normalizer.normalize(means)

    def train_prior(self, state: TrainState) -> None:
        cfg, model = self.cfg, state.model
        latents = self.fit_latent_normalizer(model).to(self.device)
        face = self.embeddings.to(self.device)
        global_ = self.global_features.to(self.device) if self.global_features is not None else None
        prior = model.prior.train()
        if not state.ema:
            state.ema = {k: v.detach().clone() for k, v in prior.state_dict().items()}
        optimizer = self._optimizer(prior.parameters(), cfg.prior_lr, state)
        diffusion = model.diffusion
        with self._bar("prior", cfg.prior_steps, state.step) as bar:
            while state.step < cfg.prior_steps:
                step = state.step
                gen = seeded_generator(cfg.seed, "prior", step)
                idx = torch.randint(len(latents), (cfg.prior_batch,), generator=gen)
                t = torch.randint(diffusion.cfg.timesteps, (cfg.prior_batch,), generator=gen).to(self.device)
                noise = torch.randn(cfg.prior_batch, model.latent_size, generator=gen).to(self.device)
                drop = (torch.rand(cfg.prior_batch, generator=gen) < cfg.prior.cond_dropout).to(self.device)
                x0 = latents[idx]
                # fused inside the step: the fusion module learns with the denoiser (for "face" it is the embedding)
                if isinstance(prior.fusion, GatedFusion):
                    face_part, global_part = prior.fusion.parts(face[idx], global_[idx])
                    cond = face_part + global_part
                else:
                    cond, global_part = model.condition_vectors(face[idx], None if global_ is None else global_[idx]), None
                output = prior(diffusion.add_noise(x0, noise, t), t, cond, drop)
                loss = F.mse_loss(output, diffusion.target(x0, noise, t))
                if global_part is not None and cfg.global_penalty > 0:
                    loss = loss + cfg.global_penalty * global_part.square().sum(-1).mean()
                value = self._check_loss(loss, "prior", step)
                self._update(optimizer, loss, learning_rate(cfg.prior_lr, step, cfg.prior_steps, cfg.warmup_steps))
                # EMA with warmup: short runs still end with a useful average.
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for key, value_t in prior.state_dict().items():
                        state.ema[key].lerp_(value_t, 1 - decay)
                state.step += 1
                state.losses["prior"] = value
                self._after_step(state, optimizer, bar, value)
        prior.eval()

    def _after_step(self, state: TrainState, optimizer, bar, loss: float) -> None:
        bar.update(1)
        if state.step % 10 == 0 or state.step == 1:
            bar.set_postfix(loss=f"{loss:.4g}")
        if state.step % self.cfg.checkpoint_every == 0:
            self.save_state(state, optimizer)
        if self.on_step is not None:
            self.on_step(state.phase, state.step)

    def run(self, resume: bool) -> TrainState:
        state = self.load_state() if resume else self.fresh_state()
        if state.phase == "autoencoder":
            self.train_autoencoder(state)
        self.train_prior(state)
        state.model.prior.load_state_dict(state.ema)
        return state


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(data: str | Path, out: str | Path, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          device: str | None = None, progress: bool = True,
          on_step: Callable[[str, int], None] | None = None) -> Hypernet:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise HypernetError(f"--out {out} must end in .safetensors")
    if out.exists() and not overwrite:
        raise HypernetError(f"{out} exists; pass --overwrite to replace it (nothing was changed)")
    if not out.parent.is_dir():
        raise HypernetError(f"the folder of --out {out} does not exist")
    if not resume and state_path(out).exists():
        raise HypernetError(f"{state_path(out)} holds an interrupted run: pass --resume to continue it, or delete "
                            "it to start over")
    dataset = open_dataset(data)
    trainer = Trainer(dataset, cfg, pick_device(device), out, progress=progress, on_step=on_step)
    started = time.perf_counter()
    state = trainer.run(resume)
    extra = {"train_config": json.dumps(cfg.to_dict()), "data": trainer.fingerprint,
             "train_identities": str(len(trainer.vectors)), "losses": json.dumps(state.losses),
             "train_seconds": f"{time.perf_counter() - started:.1f}"}
    save_hypernet(state.model, out, extra)
    read_header(out)  # what was written must read back
    trainer.state_file.unlink(missing_ok=True)
    return state.model
