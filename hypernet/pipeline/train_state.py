"""The resume file OUT.resume: what an interrupted training run needs to end bit for bit where an
uninterrupted one ends (raw and EMA weights, optimizer state, phase and step).

The format is fixed: files written by earlier versions must still resume, so the metadata keys
and tensor prefixes ("model.", "ema.", "opt.<group>.<name>") never change. Runs with early
stopping add the best prior so far under "best." and their validation record under the
metadata key "early_stop"; runs that search the prior's learning rate add the finished trials
under "lr_search" and the best finished trial's prior under "kept."; files without them resume
as before.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..common.files import save_safetensors_atomic
from ..errors import HypernetError
from ..model.hypernet import Hypernet

STATE_FORMAT = "lora-hypernet-train-state"
STATE_VERSION = 1


@dataclass
class TrainState:
    model: Hypernet
    ema: dict[str, torch.Tensor]
    phase: str = "autoencoder"
    step: int = 0
    optimizer_state: dict | None = None
    losses: dict[str, float] = field(default_factory=dict)
    best: dict[str, torch.Tensor] | None = None  # early stopping: the best EMA prior so far
    # early stopping: {"best_step", "best_loss", "since_best", "stopped", "history": [[step, fit, val], ...]}
    early: dict = field(default_factory=dict)
    # learning-rate search (trainer.py): {"trials": [{"lr", "best_loss", "best_step", "steps"}, ...],
    # "kept_early", "kept_losses"}, and the best finished trial's EMA prior
    search: dict = field(default_factory=dict)
    kept: dict[str, torch.Tensor] | None = None


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def save_train_state(path: Path, state: TrainState, optimizer: torch.optim.Optimizer, *, fingerprint: str,
                     train_config: dict, hypernet_config_json: str) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in state.model.state_dict().items()}
    tensors.update({f"ema.{k}": v.cpu() for k, v in state.ema.items()})
    tensors.update({f"best.{k}": v.detach().cpu().clone() for k, v in (state.best or {}).items()})
    tensors.update({f"kept.{k}": v.detach().cpu().clone() for k, v in (state.kept or {}).items()})
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for key, value in values.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).cpu()
    metadata = {"format": STATE_FORMAT, "format_version": str(STATE_VERSION), "phase": state.phase,
                "step": str(state.step), "data": fingerprint, "train_config": json.dumps(train_config),
                "hypernet_config": hypernet_config_json, "param_groups": json.dumps(opt["param_groups"]),
                "losses": json.dumps(state.losses)}
    if state.early:
        metadata["early_stop"] = json.dumps(state.early)
    if state.search:
        metadata["lr_search"] = json.dumps(state.search)
    save_safetensors_atomic(tensors, path, metadata)


def _read_checked(path: Path, fingerprint: str, hypernet_config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a resume file that belongs to this run; a clear error otherwise."""
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
    if meta.get("data") != fingerprint:
        raise HypernetError(f"{path} belongs to a run on another dataset (other identities, layout or face "
                            "model); resume with the same --data or delete it to start over")
    if json.loads(meta["hypernet_config"]) != hypernet_config:
        raise HypernetError(f"{path} was trained with another model config (autoencoder, prior or diffusion); "
                            "only step counts, learning rates and checkpoint_every may change on --resume")
    return meta, tensors


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_train_state(path: Path, fresh: Callable[[], TrainState], device: torch.device, *, fingerprint: str,
                     hypernet_config: dict) -> TrainState:
    """The run saved in `path`, restored into `fresh()` (a newly built state of the same model)."""
    meta, tensors = _read_checked(path, fingerprint, hypernet_config)
    state = fresh()
    try:
        state.model.load_state_dict(_with_prefix(tensors, "model."))
    except RuntimeError as exc:
        raise HypernetError(f"{path} does not fit the model ({exc}); delete it to start over") from exc
    state.ema = {k: v.to(device) for k, v in _with_prefix(tensors, "ema.").items()}
    state.phase, state.step = meta["phase"], int(meta["step"])
    state.losses = json.loads(meta.get("losses", "{}"))
    state.early = json.loads(meta.get("early_stop", "{}"))
    state.best = {k: v.to(device) for k, v in _with_prefix(tensors, "best.").items()} or None
    state.search = json.loads(meta.get("lr_search", "{}"))
    state.kept = {k: v.to(device) for k, v in _with_prefix(tensors, "kept.").items()} or None
    opt_state: dict[int, dict] = {}
    for key, value in _with_prefix(tensors, "opt.").items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    state.optimizer_state = {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
    return state
