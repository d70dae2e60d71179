"""The training loops: the weight autoencoder first, then the conditional prior on its latents.

Determinism: every step draws its batch and noise from a generator seeded by (seed, phase,
step), and the learning rate is a function of the step, so a run interrupted and resumed
from its state file (train_state.py) ends bit for bit where an uninterrupted run ends (same
device type).

Adaptive training (TrainConfig.validation_every > 0, ours, issue 19): a seeded tenth of the
training identities (ridge.validation_split) is held back; the autoencoder and the prior learn
on the rest, and the prior's EMA weights are scored on the held-back identities every
`validation_every` steps by their denoising loss at fixed noise draws. Training stops after
`patience` scores without improvement and keeps the best weights: on collections whose LoRAs
are noisy the prior otherwise learns each training identity's noise by heart (benchmarks/
probe_adaptive.py measured it). With `offset` "ridge" the prior's target is the latent minus a
ridge map of the face embedding (lambda chosen on the fit rows), so what it must learn is only
what a linear map misses.

Learning-rate search (TrainConfig.prior_lr_search, ours, issue 19): the prior is trained from
the same initial weights once at each rate, each run early-stopped as above, and the run whose
best validation loss is lowest is kept; every run is in the checkpoint's validation record. A
run at one rate of the search is exactly the run `prior_lr` at that rate gives (its batches and
schedule depend on the step only), so the kept prior is what a user training at the chosen rate
gets. A rate whose loss diverges is recorded and passed over. The runs share one budget of
`prior_steps` steps, so the search never trains the prior longer than a single run could: a run
may take the steps the runs before left (it is then the first steps of that rate's run), and
starts only if they are at least as many as the best run so far needed to reach its lowest loss
(fewer could not give the slower rates a fair trial). On large collections, whose first run is
still improving at or near the last step (2,000 identities), there is no second run, and the
training time is what it was.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..common.tensors import l2_normalize, seeded_generator
from ..data.dataset import LoraDataset
from ..errors import HypernetError
from ..lora.alignment import align, reference_factors
from ..lora.vectorize import Normalizer
from ..model.autoencoder import delta_sq_error, kl_divergence
from ..model.condition import GatedFusion, needs_global
from ..model.hypernet import Hypernet, HypernetConfig
from .ridge import choose_lambda, ridge_linear_map, validation_split
from .train_config import TrainConfig
from .train_state import TrainState, load_train_state, save_train_state, state_path

GRAD_CLIP = 1.0
FAN_IN_REFERENCE = 1024


class DivergedError(HypernetError):
    """The loss became NaN or infinite."""


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


def condition_and_penalised(model: Hypernet, face: torch.Tensor,
                            global_: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the condition rows of a batch, the part of them that TrainConfig.global_penalty keeps
    small). Only the face+global fusion has such a part: its global correction, so that the
    face stays the main signal (condition.py); the other conditions give None."""
    fusion = model.prior.fusion
    if isinstance(fusion, GatedFusion):
        face_part, global_part = fusion.parts(face, global_)
        return face_part + global_part, global_part
    return model.condition_vectors(face, global_), None


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
        embeddings = l2_normalize(embeddings)
        # The checkpoint records the dataset's encoder identity; sampling and evaluation refuse
        # features of any other encoder.
        global_features = global_inputs(dataset, cfg.condition, "train")
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None  # (vectors, embeddings) held back
        if cfg.validation_every:
            fit, val = validation_split(len(ids), cfg.seed)
            self.validation = (vectors[val], embeddings[val])
            vectors, embeddings = vectors[fit], embeddings[fit]
            global_features = None if global_features is None else global_features[fit]
        self.reference = reference_factors(vectors, dataset.layout)
        self.vectors = align(vectors, self.reference, dataset.layout)  # aligned once: each row's alignment is fixed
        self.embeddings = embeddings
        self.global_features = global_features
        uses_global = self.global_features is not None
        self.hconfig = HypernetConfig(layout=dataset.layout, embedding_model=dataset.embedding_model,
                                      embedding_dim=dataset.embedding_dim, autoencoder=cfg.autoencoder,
                                      prior=cfg.prior, diffusion=cfg.diffusion, condition=cfg.condition,
                                      global_dim=dataset.global_dim if uses_global else 0,
                                      global_encoder=dataset.global_encoder if uses_global else None,
                                      offset=cfg.offset)
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
        save_train_state(self.state_file, state, optimizer, fingerprint=self.fingerprint,
                         train_config=self.cfg.to_dict(), hypernet_config_json=self.hconfig.to_json())
        self.saved_step = (state.phase, state.step)

    def load_state(self) -> TrainState:
        state = load_train_state(self.state_file, self.fresh_state, self.device, fingerprint=self.fingerprint,
                                 hypernet_config=self.hconfig.to_dict())
        self.saved_step = (state.phase, state.step)
        return state

    # --- one step ------------------------------------------------------------------------------

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
            raise DivergedError(f"training stopped: the {phase} loss became {value} at {phase} step {step}; {kept}. "
                                f"Lower the {'ae' if phase == 'autoencoder' else 'prior'}_lr in a --config file "
                                "and run again with --resume.")
        return value

    def _bar(self, phase: str, total: int, initial: int):
        return tqdm(total=total, initial=initial, desc=phase, unit="step", disable=not self.progress,
                    file=sys.stderr, dynamic_ncols=True)

    def _after_step(self, state: TrainState, optimizer, bar, loss: float) -> None:
        bar.update(1)
        if state.step % 10 == 0 or state.step == 1:
            bar.set_postfix(loss=f"{loss:.4g}")
        if state.step % self.cfg.checkpoint_every == 0:
            self.save_state(state, optimizer)
        if self.on_step is not None:
            self.on_step(state.phase, state.step)

    # --- phases --------------------------------------------------------------------------------

    def train_autoencoder(self, state: TrainState) -> None:
        cfg, model = self.cfg, state.model
        vae = model.vae.train()
        mean, std = model.norm.mean, model.norm.std
        if cfg.autoencoder.kind == "linear":  # closed form: principal directions, no steps
            vae.fit(model.normalizer.normalize(self.vectors.to(self.device)), cfg.seed)
            state.phase, state.step = "prior", 0
            vae.eval()
            return
        optimizer = self._optimizer(vae.parameters(), cfg.ae_lr, state)
        layout = self.dataset.layout
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
        """Posterior means of the training set, then the latent normaliser (per dimension, or one
        scale for all: TrainConfig.latent_normalizer)."""
        with torch.no_grad():
            means = torch.cat([model.vae.encode(model.normalizer.normalize(v.to(self.device)))[0].cpu()
                               for v in self.vectors.split(64)])
        normalizer = Normalizer.fit(means, mode=self.cfg.latent_normalizer)
        model.norm.latent_mean.copy_(normalizer.mean)
        model.norm.latent_std.copy_(normalizer.std)
        return normalizer.normalize(means)

    def _prior_loss(self, model: Hypernet, x0: torch.Tensor, face: torch.Tensor, global_: torch.Tensor | None,
                    noise: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        # The condition is computed inside the step: a fusion module learns with the denoiser.
        cond, penalised = condition_and_penalised(model, face, global_)
        diffusion = model.diffusion
        output = model.prior(diffusion.add_noise(x0, noise, t), t, cond, drop)
        loss = F.mse_loss(output, diffusion.target(x0, noise, t))
        if penalised is not None and self.cfg.global_penalty > 0:
            loss = loss + self.cfg.global_penalty * penalised.square().sum(-1).mean()
        return loss

    def fit_offset(self, model: Hypernet, latents: torch.Tensor) -> torch.Tensor:
        """offset "ridge": store the ridge map face -> latent in the model and return the residuals."""
        face = self.embeddings.to(latents)
        lam, _ = choose_lambda(face, latents, lambda p, t: float((p - t).square().mean()), seed=self.cfg.seed)
        weight, bias = ridge_linear_map(face, latents, lam)
        model.norm.offset_weight.copy_(weight)
        model.norm.offset_bias.copy_(bias)
        return latents - model.latent_offset(face)

    def _validation_batch(self, model: Hypernet, rows: torch.Tensor, face: torch.Tensor, draws: int = 8):
        """Fixed (x0, face, noise, t) draws for scoring the prior on some rows: the same every time."""
        gen = seeded_generator(self.cfg.seed, "validation-draws", rows.shape[0])
        n = rows.shape[0] * draws
        t = torch.randint(model.diffusion.cfg.timesteps, (n,), generator=gen).to(self.device)
        noise = torch.randn(n, model.latent_size, generator=gen).to(self.device)
        return rows.repeat(draws, 1), face.repeat(draws, 1), noise, t

    @torch.no_grad()
    def _scored_loss(self, model: Hypernet, prior: torch.nn.Module, batch) -> float:
        x0, face, noise, t = batch
        keep = torch.zeros(len(t), dtype=torch.bool, device=self.device)  # no condition dropout
        output = prior(model.diffusion.add_noise(x0, noise, t), t, face, keep)  # face: the condition itself
        return float(F.mse_loss(output, model.diffusion.target(x0, noise, t)))

    def _early_stopping(self, model: Hypernet, fit_latents: torch.Tensor, face: torch.Tensor):
        """A function(state) -> stop?, scoring the EMA prior on the validation rows (and, for the
        record, on as many fit rows), or None when the config has no validation split."""
        if self.validation is None:
            return None
        val_vectors, val_face = self.validation
        with torch.no_grad():
            val_latents = model.encode_vectors(val_vectors).to(self.device)  # canonical rows: it aligns them
            val_face = val_face.to(self.device)
            offset = model.latent_offset(val_face)
            if offset is not None:
                val_latents = val_latents - offset
        count = min(len(val_latents), len(fit_latents))
        val_batch = self._validation_batch(model, val_latents, val_face)
        fit_batch = self._validation_batch(model, fit_latents[:count], face[:count])
        scorer = copy.deepcopy(model.prior).eval()

        def check(state: TrainState) -> bool:
            scorer.load_state_dict(state.ema)
            fit_loss, val_loss = self._scored_loss(model, scorer, fit_batch), self._scored_loss(model, scorer, val_batch)
            early = state.early
            early.setdefault("history", []).append([state.step, fit_loss, val_loss])
            if val_loss < early.get("best_loss", math.inf) * (1 - 1e-3):
                early.update(best_loss=val_loss, best_step=state.step, since_best=0)
                state.best = {k: v.detach().clone() for k, v in state.ema.items()}
            else:
                early["since_best"] = early.get("since_best", 0) + 1
            early["stopped"] = early["since_best"] >= self.cfg.patience
            return early["stopped"]

        return check

    def train_prior(self, state: TrainState, lr: float | None = None, steps: int | None = None) -> None:
        """Train the prior at `lr` (cfg.prior_lr) until step `steps` (cfg.prior_steps) or an early
        stop; the schedule runs over cfg.prior_steps either way, so fewer steps are a prefix of the
        whole run."""
        cfg, model = self.cfg, state.model
        lr = cfg.prior_lr if lr is None else lr
        steps = cfg.prior_steps if steps is None else steps
        latents = self.fit_latent_normalizer(model).to(self.device)
        if cfg.offset == "ridge":
            latents = self.fit_offset(model, latents)
        face = self.embeddings.to(self.device)
        global_ = self.global_features.to(self.device) if self.global_features is not None else None
        prior = model.prior.train()
        if not state.ema:
            state.ema = {k: v.detach().clone() for k, v in prior.state_dict().items()}
        optimizer = self._optimizer(prior.parameters(), lr, state)
        should_stop = self._early_stopping(model, latents, face)
        with self._bar("prior", steps, state.step) as bar:
            while state.step < steps and not state.early.get("stopped"):
                step = state.step
                gen = seeded_generator(cfg.seed, "prior", step)
                idx = torch.randint(len(latents), (cfg.prior_batch,), generator=gen)
                t = torch.randint(model.diffusion.cfg.timesteps, (cfg.prior_batch,), generator=gen).to(self.device)
                noise = torch.randn(cfg.prior_batch, model.latent_size, generator=gen).to(self.device)
                drop = (torch.rand(cfg.prior_batch, generator=gen) < cfg.prior.cond_dropout).to(self.device)
                loss = self._prior_loss(model, latents[idx], face[idx], None if global_ is None else global_[idx],
                                        noise, t, drop)
                value = self._check_loss(loss, "prior", step)
                self._update(optimizer, loss, learning_rate(lr, step, cfg.prior_steps, cfg.warmup_steps))
                # EMA with warmup: short runs still end with a useful average.
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for key, value_t in prior.state_dict().items():
                        state.ema[key].lerp_(value_t, 1 - decay)
                state.step += 1
                state.losses["prior"] = value
                if should_stop is not None and state.step % cfg.validation_every == 0:
                    should_stop(state)  # before the state is saved, so a resumed run sees the same record
                self._after_step(state, optimizer, bar, value)
        if state.best is not None:
            state.ema = state.best
        prior.eval()

    def search_prior_lr(self, state: TrainState) -> None:
        """Train the prior at the rates of prior_lr_search, in order, while the budget allows (see the
        module's docstring) and leave the run with the lowest validation loss in `state`; its early
        record gains "lr_search" (every run's {lr, best_loss, best_step, steps}; {lr, "skipped"} for
        the rates the budget left out) and "prior_lr" (the rate kept)."""
        trials = state.search.setdefault("trials", [])
        initial = None
        for lr in self.cfg.prior_lr_search[len(trials):]:
            # the runs share prior_steps; a run gets what is left if that is enough for a fair trial
            left = self.cfg.prior_steps - sum(t["steps"] for t in trials)
            finished = [t for t in trials if t["best_loss"] is not None]
            needed = min(finished, key=lambda t: t["best_loss"])["best_step"] if finished else 1
            if left < needed:
                trials.append({"lr": lr, "best_loss": None, "skipped": True, "steps": 0})
                continue
            # the first run starts from the initial weights; a run begun before a resume continues
            if trials and not (state.step or state.ema):
                if initial is None:
                    initial = self.fresh_state().model.prior.state_dict()
                state.model.prior.load_state_dict(initial)
            try:
                self.train_prior(state, lr, steps=left)
                trial = {"lr": lr, "best_loss": state.early.get("best_loss"),
                         "best_step": state.early.get("best_step"), "steps": state.step}
            except DivergedError:
                trial = {"lr": lr, "best_loss": None, "diverged": True, "steps": state.step}
            if trial["best_loss"] is not None and trial["best_loss"] < min((t["best_loss"] for t in finished),
                                                                           default=math.inf):
                state.kept = {k: v.detach().clone() for k, v in state.ema.items()}
                state.search.update(kept_early=state.early, kept_losses=dict(state.losses))
            trials.append(trial)
            state.ema, state.best, state.early, state.step, state.optimizer_state = {}, None, {}, 0, None
            state.losses.pop("prior", None)
        if state.kept is None:
            raise HypernetError(f"training stopped: the prior's loss diverged at every learning rate of "
                                f"prior_lr_search {list(self.cfg.prior_lr_search)}; try lower ones")
        kept = min((t for t in trials if t["best_loss"] is not None), key=lambda t: t["best_loss"])
        state.ema, state.early = state.kept, {**state.search["kept_early"], "lr_search": trials,
                                               "prior_lr": kept["lr"]}
        state.losses = dict(state.search["kept_losses"])

    def run(self, resume: bool) -> TrainState:
        state = self.load_state() if resume else self.fresh_state()
        if state.phase == "autoencoder":
            self.train_autoencoder(state)
        if self.cfg.prior_lr_search:
            self.search_prior_lr(state)
        else:
            self.train_prior(state)
        state.model.prior.load_state_dict(state.ema)
        return state
