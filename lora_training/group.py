"""Several identities' LoRAs trained in one batched loop: one forward/backward per step over every
identity's batch, each sample's rows seeing only its own identity's LoRA.

For small latents (the typeface miniature's 4x8x8) a training step of the one-identity loop
(trainer.py, one guider call per image) is almost all per-call overhead; stacking K identities
into one call pays that overhead once. Each layout module gets a forward hook that adds
scale * up_k(down_k(x)) to the rows of identity k, with the factors stacked as [K, out, r] and
[K, r, in], so the base weights stay untouched and shared.

What stays as in trainer.py, so that an identity's LoRA does not depend on its group (nor on
whether it was trained alone there): the start (adapters.new_adapters from its seed), its batch,
noise and timestep draws (a generator of its own seed, drawn in trainer.py's order), the loss
(ComfyUI's model_sampling: x0 MSE / sigma^2 through apply_model with the conds ComfyUI's
sampler would build) and the reported losses on the same fixed draws. One AdamW over the
stacked factors is K independent Adams (Adam is elementwise; no weight decay, no clipping).
Class images (prior preservation) are not supported here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch

from ._hypernet import HypernetError, Layout, LoraWeights, ModuleWeights, lora_to_state_dict
from .adapters import let_gradients_through, new_adapters, remove_adapters, weight_keys
from .settings import TrainingResult, lr_scheduler
from .trainer import _EVAL_SEED_OFFSET, _PERCENT_RANGE, _detached_conditioning


_EVAL_VALUES_PER_CALL = 2 ** 16  # latent values per no-gradient call: 256 rows of 4x8x8, 1 of SDXL's 4x128x128


@dataclass
class GroupMember:
    """One identity: VAE latents [N, C, h, w], one CONDITIONING per image, and its seed."""

    latents: torch.Tensor
    conditioning: Sequence[list]
    seed: int


class _StackedLora:
    """The K identities' factors of every layout module, and the hooks that apply them.

    `which` (identity indices, one per equal block of rows, identity-major) says whose LoRA each
    row of the next forward sees; None runs the base model alone."""

    def __init__(self, layout: Layout, starts: list[dict], device):
        self.ups, self.downs, self.scales = {}, {}, {}
        for module in layout.modules:
            adapters = [start[module.name] for start in starts]
            self.ups[module.name] = torch.nn.Parameter(torch.stack([a.lora_up.weight.detach() for a in adapters]).to(device))
            self.downs[module.name] = torch.nn.Parameter(torch.stack([a.lora_down.weight.detach() for a in adapters]).to(device))
            self.scales[module.name] = float(adapters[0].alpha) / module.rank  # as LoRAAdapter scales
        self.alphas = {module.name: float(starts[0][module.name].alpha) for module in layout.modules}
        self.which: torch.Tensor | None = None
        self.handles = []

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.ups.values(), *self.downs.values()]

    def attach(self, model, keys: dict[str, str]) -> None:
        for name, key in keys.items():
            layer = comfy.utils.get_attr(model, key.rsplit(".", 1)[0])
            self.handles.append(layer.register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, name: str):
        def add_lora(layer, inputs, output):
            if self.which is None:
                return output
            x = inputs[0]
            rows = x.reshape(len(self.which), -1, x.shape[-1]).float()
            down, up = self.downs[name][self.which], self.ups[name][self.which]
            delta = torch.bmm(torch.bmm(rows, down.transpose(1, 2)), up.transpose(1, 2))
            return output + (self.scales[name] * delta).reshape(output.shape).to(output.dtype)
        return add_lora

    def weights(self, k: int) -> LoraWeights:
        return LoraWeights({name: ModuleWeights(self.ups[name][k].detach().float().cpu().clone(),
                                                self.downs[name][k].detach().float().cpu().clone(), self.alphas[name])
                            for name in self.ups})


class _Batch:
    """Rows of one model call: clean latents, noise, sigmas and the conds of each row's caption."""

    def __init__(self):
        self.x0, self.noise, self.sigmas, self.conds = [], [], [], []

    def add(self, x0: torch.Tensor, noise: torch.Tensor, sigma: float, conds: dict) -> None:
        self.x0.append(x0)
        self.noise.append(noise)
        self.sigmas.append(sigma)
        self.conds.append(conds)

    def __len__(self):
        return len(self.x0)


class _GroupRun:
    def __init__(self, model, members: Sequence[GroupMember], device):
        self.model, self.device = model, device
        self.sampling = model.model_sampling
        # process_latent_in: the model space the guider moves latents into before sampling
        self.latents = [model.process_latent_in(m.latents.detach().clone().float()) for m in members]
        self.conds = [[self._model_conds(entry, latents[i:i + 1]) for i, entry in enumerate(m.conditioning)]
                      for m, latents in zip(members, self.latents)]

    def _model_conds(self, conditioning: list, latent: torch.Tensor) -> dict:
        """What ComfyUI's sampler hands apply_model for this caption (process_conds ->
        encode_model_conds -> the model's extra_conds), for one row."""
        if len(conditioning) != 1:
            raise HypernetError(f"a caption's CONDITIONING has {len(conditioning)} entries; training several "
                                "identities per step needs one per caption")
        converted = comfy.sampler_helpers.convert_cond(_detached_conditioning(conditioning))
        encoded = comfy.samplers.encode_model_conds(self.model.extra_conds, converted, torch.zeros_like(latent),
                                                    self.device, "positive", latent_image=latent)
        return encoded[0]["model_conds"]

    def draw(self, k: int, generator: torch.Generator, index: int, percent: float | None = None):
        """trainer._TrainingRun._draw's order: the noise, then (when not fixed) the timestep."""
        noise = torch.randn(self.latents[k][index:index + 1].shape, generator=generator)
        if percent is None:
            percent = float(torch.rand((), generator=generator))
        percent = min(max(percent, _PERCENT_RANGE[0]), _PERCENT_RANGE[1])
        return index, noise, float(self.sampling.percent_to_sigma(percent))

    def add(self, batch: _Batch, k: int, draw) -> None:
        index, noise, sigma = draw
        batch.add(self.latents[k][index:index + 1], noise, sigma, self.conds[k][index])

    def losses(self, batch: _Batch) -> torch.Tensor:
        """Per-row noise MSE (x0 MSE / sigma^2) of one model call over the batch."""
        x0 = torch.cat(batch.x0).to(self.device)
        noise = torch.cat(batch.noise).to(x0)
        sigma = torch.tensor(batch.sigmas, device=self.device, dtype=torch.float32)
        xt = self.sampling.noise_scaling(sigma, noise, x0, False)
        conds = {key: batch.conds[0][key].concat([c[key] for c in batch.conds[1:]]) for key in batch.conds[0]}
        conds = {key: value.to(self.device) if isinstance(value, torch.Tensor) else value for key, value in conds.items()}
        denoised = self.model.apply_model(xt, sigma, **conds)
        return (denoised.float() - x0.float()).pow(2).flatten(1).mean(1) / sigma.pow(2)


def train_group(patcher, members: Sequence[GroupMember], layout: Layout, *, steps: int, learning_rate: float,
                batch_size: int = 1, init_lora: LoraWeights | None = None, eval_draws: int = 4,
                lr_schedule: str = "constant",
                progress: Callable[[int, int], None] | None = None) -> list[TrainingResult | HypernetError]:
    """One LoRA of `layout` per member, trained together on a loaded MODEL, which comes out
    unchanged. A member whose loss stops being finite gets a HypernetError in its place; the
    others train on. `seconds` of each result is the group's time over the group's size."""
    if not members:
        return []
    if steps < 0 or batch_size < 1:
        raise HypernetError(f"steps must be 0 or more and batch_size 1 or more (got {steps}, {batch_size})")
    for member in members:
        if member.latents.ndim != 4 or member.latents.shape[0] == 0 or len(member.conditioning) != member.latents.shape[0]:
            raise HypernetError(f"a group member needs a non-empty [N, C, h, w] latent batch and one caption per image "
                                f"(got {tuple(member.latents.shape)} and {len(member.conditioning)})")
    started = time.perf_counter()
    clone = patcher.clone()
    keys = weight_keys(clone, layout)
    shapes = {name: comfy.utils.get_attr(clone.model, key).shape for name, key in keys.items()}
    device = clone.load_device
    grad_flags = {p: p.requires_grad for p in patcher.model.parameters()}
    with torch.inference_mode(False):
        lora = _StackedLora(layout, [new_adapters(layout, shapes, m.seed, init_lora, device) for m in members], device)
        let_gradients_through(clone, skip=set())
    try:
        with torch.inference_mode(False), torch.enable_grad():
            patcher.model.requires_grad_(False)
            comfy.model_management.load_models_gpu([clone])
            lora.attach(clone.model, keys)
            run = _GroupRun(clone.model, members, device)
            starts_at_base = init_lora is None or all(not bool(m.up.any()) for m in init_lora.values())
            losses = _train(run, lora, members, steps, learning_rate, lr_schedule, batch_size, eval_draws,
                            starts_at_base, progress)
    finally:
        lora.detach()
        remove_adapters(clone, {})
        for param, flag in grad_flags.items():
            with torch.inference_mode(param.is_inference()):
                param.requires_grad_(flag)
    seconds = (time.perf_counter() - started) / len(members)
    results = []
    for k, (base, initial, final, train_losses, error) in enumerate(losses):
        results.append(error or TrainingResult(state_dict=lora_to_state_dict(lora.weights(k)), loss=final,
                                               base_loss=base, initial_loss=initial, steps=steps, seconds=seconds,
                                               train_losses=train_losses))
    return results


def _train(run: _GroupRun, lora: _StackedLora, members, steps, learning_rate, lr_schedule, batch_size, eval_draws,
           fresh, progress) -> list[tuple]:
    count = len(members)
    evals = []
    for k, member in enumerate(members):
        generator = torch.Generator().manual_seed(member.seed + _EVAL_SEED_OFFSET)
        evals.append([run.draw(k, generator, i, (d + 0.5) / eval_draws)
                      for i in range(member.latents.shape[0]) for d in range(eval_draws)])
    # No gradients kept: twice a training step's rows fit, and small latents go many to a call (at
    # one identity, batch 1, two rows a call made Refine's loss reports most of its time).
    chunk = max(2 * count * batch_size, _EVAL_VALUES_PER_CALL // members[0].latents[0].numel())
    base = [_mean_loss(run, lora, k, evals[k], None, chunk) for k in range(count)]
    # A fresh LoRA (or a start with zero up factors) adds exactly nothing: its loss is the base's.
    initial = list(base) if fresh else [_mean_loss(run, lora, k, evals[k], k, chunk) for k in range(count)]
    generators = [torch.Generator().manual_seed(m.seed) for m in members]
    optimizer = torch.optim.AdamW(lora.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = lr_scheduler(optimizer, lr_schedule, steps)
    errors: list[HypernetError | None] = [None] * count
    train_losses: list[list[float]] = [[] for _ in members]
    for step in range(steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        alive = [k for k in range(count) if errors[k] is None]
        if not alive:
            break
        batch = _Batch()
        for k in alive:
            picks = torch.randint(members[k].latents.shape[0], (batch_size,), generator=generators[k]).tolist()
            for index in picks:
                run.add(batch, k, run.draw(k, generators[k], index))
        optimizer.zero_grad(set_to_none=True)
        lora.which = torch.tensor(alive, device=run.device)
        per_identity = run.losses(batch).view(len(alive), batch_size).mean(1)
        finite = torch.isfinite(per_identity)
        per_identity[finite].sum().backward()
        for position, k in enumerate(alive):
            value = float(per_identity[position].detach())
            if not finite[position]:
                errors[k] = HypernetError(f"the training loss became {value} at step {step + 1}; lower the learning rate")
            train_losses[k].append(value)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if progress is not None:
            progress(step + 1, steps)
    lora.which = None
    final = [None if errors[k] else _mean_loss(run, lora, k, evals[k], k, chunk) for k in range(count)]
    return [(base[k], initial[k], final[k], train_losses[k], errors[k]) for k in range(count)]


@torch.no_grad()
def _mean_loss(run: _GroupRun, lora: _StackedLora, k: int, draws, which: int | None, chunk: int) -> float:
    """Identity k's mean loss over its fixed draws, with LoRA `which` (None: the base model)."""
    lora.which = None if which is None else torch.tensor([which], device=run.device)
    total = 0.0
    try:
        for start in range(0, len(draws), chunk):
            batch = _Batch()
            for draw in draws[start:start + chunk]:
                run.add(batch, k, draw)
            total += float(run.losses(batch).sum())
    finally:
        lora.which = None
    return total / len(draws)
