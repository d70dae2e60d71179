"""`train()`: the library entry `python -m hypernet train` calls, from a dataset folder to a hypernet file.

Files: OUT (the hypernet, written once at the end, atomically) and OUT.resume (train_state.py;
written atomically every `checkpoint_every` steps and removed when training finishes). Neither
is ever half-written. The pieces live beside this module: train_config.py (TrainConfig and its
presets), train_state.py (the resume file), trainer.py (the loops).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from ..data.dataset import open_dataset
from ..errors import HypernetError
from ..model.checkpoint import read_header, save_hypernet
from ..model.hypernet import Hypernet
from .auto_config import choose_sampling
from .outputs import check_output
from .train_config import PRESETS, TrainConfig, load_train_config
from .train_state import state_path
from .trainer import Trainer

# The CLI, benchmarks and tests import the training API from here; each name is defined once, above.
__all__ = ["PRESETS", "TrainConfig", "Trainer", "load_train_config", "pick_device", "state_path", "train"]


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    check_output(out, overwrite)
    if not out.parent.is_dir():
        raise HypernetError(f"the folder of --out {out} does not exist")
    if not resume and state_path(out).exists():
        raise HypernetError(f"{state_path(out)} holds an interrupted run: pass --resume to continue it, or delete "
                            "it to start over")


def train(data: str | Path, out: str | Path, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          device: str | None = None, progress: bool = True,
          on_step: Callable[[str, int], None] | None = None, choices: list[str] | None = None) -> Hypernet:
    """Train and write OUT. `choices`: how an automatic config was chosen (auto_config.py), for
    the checkpoint's `auto` record. With cfg.choose_sampling the checkpoint's temperature is set
    on the validation split and the `auto` record says whether the hypernet beat ridge there."""
    out = Path(out)
    _check_out(out, resume, overwrite)
    dataset = open_dataset(data)
    trainer = Trainer(dataset, cfg, pick_device(device), out, progress=progress, on_step=on_step)
    started = time.perf_counter()
    state = trainer.run(resume)
    extra = {"train_config": json.dumps(cfg.to_dict()), "data": trainer.fingerprint,
             "train_identities": str(len(trainer.vectors)), "losses": json.dumps(state.losses)}
    if state.early:
        extra["validation"] = json.dumps(state.early)
    if cfg.choose_sampling:
        record = choose_sampling(state.model, (trainer.vectors, trainer.embeddings), trainer.validation)
        extra["auto"] = json.dumps({"choices": choices or [], **record})
    extra["train_seconds"] = f"{time.perf_counter() - started:.1f}"
    save_hypernet(state.model, out, extra)
    read_header(out)  # what was written must read back
    trainer.state_file.unlink(missing_ok=True)
    return state.model
