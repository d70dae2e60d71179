"""The training loop: ComfyUI's own sampling machinery runs it, as its Train LoRA node does.

A `CFGGuider` with only a positive condition loads the MODEL clone through model management
(`prepare_sampling`), turns the conditioning into the model's inputs (`process_conds`: SDXL's
pooled/size embedding included) and shifts latents into the model's space; instead of a sampler
it hands control to `_TrainingSampler`, whose loss is ComfyUI's: noise added by the model's
`model_sampling.noise_scaling` at a timestep from `percent_to_sigma`, the model's denoised
prediction (x0) compared with the clean latent by MSE. Nothing of the UNet is rewritten here.

One change to ComfyUI's loss: the x0 MSE is divided by sigma^2, which makes it the noise (eps)
MSE that DreamBooth, kohya and weights2weights train with. Unweighted, the high-noise timesteps
(sigma^2 up to about 200) drown the rest; on the tiny test model 30 steps then moved the loss by
a millionth of its value.

Each image is its own forward pass with its own caption (ComfyUI's node would average the
predictions of all captions in a batch); a batch accumulates gradients over its images.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import comfy.model_management
import comfy.samplers
import torch
import torch.nn.functional as F

from ._hypernet import HypernetError, Layout, LoraWeights
from .adapters import adapters_state_dict, create_adapters, let_gradients_through, remove_adapters
from .settings import TrainingResult, TrainingStopped, lr_scheduler

# Timesteps at the very ends of the schedule map to sigma 0 or "infinity" in percent_to_sigma.
_PERCENT_RANGE = (1e-3, 1.0 - 1e-3)
_EVAL_SEED_OFFSET = 0x5EED


class _PositiveOnlyGuider(comfy.samplers.CFGGuider):
    """CFG scale 1 with no negative: one model call per step (ComfyUI's Guider_Basic)."""

    def set_conds(self, positive):
        self.inner_set_conds({"positive": positive})


class _TrainingSampler(comfy.samplers.Sampler):
    def __init__(self, run: "_TrainingRun"):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.run.execute(model_wrap, extra_args, latent_image)
        return torch.zeros_like(latent_image)


class _TrainingRun:
    """State of one run inside the guider: data, adapters, optimizer and the numbers measured."""

    def __init__(self, adapters, spans, n_identity, steps, learning_rate, lr_schedule, seed, batch_size,
                 prior_loss_weight, eval_draws, progress, should_stop):
        self.adapters = adapters
        self.spans = spans  # image index -> its entries in the guider's positive conds
        self.n_identity = n_identity  # images [0, n_identity) are the identity's, the rest class images
        self.steps, self.seed, self.batch_size = steps, seed, batch_size
        self.prior_loss_weight = prior_loss_weight
        self.eval_draws = eval_draws
        self.progress, self.should_stop = progress, should_stop
        params = [p for a in adapters.values() for p in a.parameters() if p.requires_grad]
        # No weight decay: it would pull a refined hypernet LoRA towards zero, not towards the person.
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        self.scheduler = lr_scheduler(self.optimizer, lr_schedule, steps)
        self.train_losses: list[float] = []

    def execute(self, model_wrap, extra_args, latents):
        self.model_wrap, self.extra_args, self.latents = model_wrap, extra_args, latents
        self.conds = list(model_wrap.conds["positive"])
        self.sampling = model_wrap.inner_model.model_sampling
        try:
            draws = self._eval_draws()
            with self._without_lora():
                self.base_loss = self._mean_loss(draws)
            self.initial_loss = self._mean_loss(draws)
            self._train()
            self.loss = self._mean_loss(draws)
        finally:
            model_wrap.conds["positive"] = self.conds

    def _loss(self, index: int, noise: torch.Tensor, percent: float) -> torch.Tensor:
        x0 = self.latents[index:index + 1]
        sigma = torch.tensor([self.sampling.percent_to_sigma(percent)], device=x0.device, dtype=torch.float32)
        xt = self.sampling.noise_scaling(sigma, noise.to(x0), x0, False)
        self.model_wrap.conds["positive"] = [self.conds[i] for i in self.spans[index]]
        denoised = self.model_wrap(xt, sigma, **self.extra_args)
        return F.mse_loss(denoised.float(), x0.float()) / float(sigma) ** 2

    def _draw(self, generator: torch.Generator, index: int, percent: float | None = None):
        noise = torch.randn(self.latents[index:index + 1].shape, generator=generator)
        if percent is None:
            percent = float(torch.rand((), generator=generator))
        return index, noise, min(max(percent, _PERCENT_RANGE[0]), _PERCENT_RANGE[1])

    def _eval_draws(self):
        """Fixed noise per image at evenly spread timesteps: the same for all reported losses."""
        generator = torch.Generator().manual_seed(self.seed + _EVAL_SEED_OFFSET)
        return [self._draw(generator, i, (k + 0.5) / self.eval_draws)
                for i in range(self.n_identity) for k in range(self.eval_draws)]

    @torch.no_grad()
    def _mean_loss(self, draws) -> float:
        return sum(float(self._loss(*draw)) for draw in draws) / len(draws)

    @contextlib.contextmanager
    def _without_lora(self):
        """The base model: alpha 0 makes each adapter's weight exactly W + 0 * delta = W."""
        alphas = {name: a.alpha.data.clone() for name, a in self.adapters.items()}
        for adapter in self.adapters.values():
            adapter.alpha.data.zero_()
        try:
            yield
        finally:
            for name, adapter in self.adapters.items():
                adapter.alpha.data.copy_(alphas[name])

    def _train(self):
        generator = torch.Generator().manual_seed(self.seed)
        n_class = self.latents.shape[0] - self.n_identity
        for step in range(self.steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if self.should_stop is not None and self.should_stop():
                raise TrainingStopped(f"training stopped after {step} of {self.steps} steps")
            self.optimizer.zero_grad(set_to_none=True)
            picks = torch.randint(self.n_identity, (self.batch_size,), generator=generator).tolist()
            total = 0.0
            for index in picks:
                loss = self._loss(*self._draw(generator, index)) / self.batch_size
                loss.backward()
                total += float(loss.detach())
            if n_class:
                for index in torch.randint(n_class, (self.batch_size,), generator=generator).tolist():
                    loss = self._loss(*self._draw(generator, self.n_identity + index))
                    (loss * self.prior_loss_weight / self.batch_size).backward()
            if not torch.isfinite(torch.tensor(total)):
                raise HypernetError(f"the training loss became {total} at step {step + 1}; lower the learning rate")
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.train_losses.append(total)
            if self.progress is not None:
                self.progress(step + 1, self.steps)


def _detached_conditioning(conditioning: list) -> list:
    """Copies of CONDITIONING tensors made outside inference mode: ComfyUI runs nodes under
    torch.inference_mode(), and its tensors cannot take part in a backward pass."""
    def copy(value):
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value
    return [copy(entry) for entry in conditioning]


def train_lora(patcher, latents: torch.Tensor, conditioning: Sequence[list], layout: Layout, *, steps: int,
               learning_rate: float, seed: int, batch_size: int = 1, init_lora: LoraWeights | None = None,
               class_latents: torch.Tensor | None = None, class_conditioning: Sequence[list] = (),
               prior_loss_weight: float = 1.0, eval_draws: int = 4, lr_schedule: str = "constant",
               progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> TrainingResult:
    """Train one LoRA of `layout` on a loaded MODEL (ModelPatcher), which comes out unchanged.

    `latents` [N, C, h, w] are the VAE's encodings of the training images (as VAE Encode gives
    them), `conditioning[i]` the CONDITIONING of image i's caption. Class latents and their
    conditioning, if given, add DreamBooth's prior-preservation term. ComfyUI's Cancel raises
    its interrupt exception between steps, `should_stop()` returning True raises TrainingStopped;
    either way the MODEL is left without the adapters.
    """
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise HypernetError(f"training latents must be a non-empty [N, C, h, w] batch, not shape {tuple(latents.shape)}")
    if len(conditioning) != latents.shape[0]:
        raise HypernetError(f"{latents.shape[0]} training images but {len(conditioning)} captions: give one per image")
    n_class = 0 if class_latents is None else class_latents.shape[0]
    if n_class != len(class_conditioning):
        raise HypernetError(f"{n_class} class images but {len(class_conditioning)} class captions")
    if steps < 0 or batch_size < 1:
        raise HypernetError(f"steps must be 0 or more and batch_size 1 or more (got {steps}, {batch_size})")
    started = time.perf_counter()
    clone = patcher.clone()
    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode, whose tensors take no gradients
        adapters = create_adapters(clone, layout, seed, init_lora)
        let_gradients_through(clone, skip=set(clone.weight_wrapper_patches))
    grad_flags = {p: p.requires_grad for p in patcher.model.parameters()}
    try:
        with torch.inference_mode(False), torch.enable_grad():
            all_latents = latents if n_class == 0 else torch.cat([latents, class_latents.to(latents)])
            all_latents = all_latents.detach().clone().float()
            positive, spans = [], []
            for entries in [*conditioning, *class_conditioning]:
                if not entries:
                    raise HypernetError("a caption's CONDITIONING is empty: connect a CLIP Text Encode output")
                spans.append(range(len(positive), len(positive) + len(entries)))
                positive.extend(_detached_conditioning(entries))
            patcher.model.requires_grad_(False)
            run = _TrainingRun(adapters, spans, latents.shape[0], steps, learning_rate, lr_schedule, seed,
                               batch_size, prior_loss_weight, eval_draws, progress, should_stop)
            guider = _PositiveOnlyGuider(clone)
            guider.set_conds(positive)
            # The sigmas only have to be non-empty: the training sampler draws its own timesteps.
            guider.sample(torch.zeros_like(all_latents), all_latents, _TrainingSampler(run),
                          torch.tensor([1.0, 0.0]), seed=seed)
    finally:
        remove_adapters(clone, adapters)
        for param, flag in grad_flags.items():
            with torch.inference_mode(param.is_inference()):  # only there may an inference tensor's flag change
                param.requires_grad_(flag)
    return TrainingResult(state_dict=adapters_state_dict(adapters, layout), loss=run.loss, base_loss=run.base_loss,
                          initial_loss=run.initial_loss, steps=steps, seconds=time.perf_counter() - started,
                          train_losses=run.train_losses)
