"""The per-identity code path: every runner (in-process, worker processes, Ray tasks) calls
`collect_identity`, which trains one LoRA and writes the identity's folder atomically.

The trainer package needs ComfyUI, so it is imported by name here, at run time, inside the
process that trains; `hypernet` itself never imports ComfyUI.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from .. import GENERATOR
from ..common.comfy_side import import_comfy_side
from ..common.files import link_or_copy, save_safetensors_atomic
from ..common.images import read_image
from ..common.messages import one_line
from ..data.condition_sources import embed_photos
from ..data.identity_folders import EMBEDDING_FILE, IdentityFolder, Skip
from ..errors import HypernetError
from ..lora.layout import Layout
from ..lora.lora_io import layout_from_lora, lora_from_state_dict, lora_to_state_dict, read_lora, write_lora
from .jobs import LORA_FILE, PARTIAL_PREFIX, RECORD_FILE, IdentityJob, RunSpec, layout_difference


def load_preload(entry: str) -> None:
    """Import a module by name, or a .py file / package folder by path, as ComfyUI loads custom
    nodes: the hook for code that must run in every worker before the base model loads (e.g. a
    pack that teaches the checkpoint loader another model format)."""
    path = Path(entry)
    if not path.exists():
        importlib.import_module(entry)
        return
    init = path / "__init__.py" if path.is_dir() else path
    name = path.stem if path.is_file() else path.name
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


class TrainerHost:
    """One per process: the trainer package, the base model (loaded once) and the face model."""

    def __init__(self, spec: RunSpec):
        torch.set_num_threads(spec.threads)
        package = import_comfy_side(spec.trainer, "the trainer package", "collect")
        for entry in spec.preload:
            load_preload(entry)
        settings = package.TrainingSettings(
            steps=spec.settings.steps, learning_rate=spec.settings.learning_rate,
            batch_size=spec.settings.batch_size, resolution=spec.settings.resolution, seed=spec.settings.seed,
            caption_template=spec.settings.caption_template, token=spec.settings.token,
            class_images=tuple(spec.settings.class_images))
        self.layout = Layout.from_dict(spec.layout)
        self.trainer = package.IdentityTrainer(spec.base_checkpoint, self.layout, settings)
        self.init_lora = lora_to_state_dict(read_lora(spec.init_lora)) if spec.init_lora else None
        self.face = None
        if spec.face_model:
            from ..encoders.face import ArcFaceEmbedder
            self.face = ArcFaceEmbedder(spec.face_model)


_HOST: list[tuple[RunSpec, TrainerHost]] = []  # this process's one host: the base model loads once


def host_for(spec: RunSpec) -> TrainerHost:
    if not _HOST or _HOST[0][0] != spec:
        _HOST.clear()
        _HOST.append((spec, TrainerHost(spec)))
    return _HOST[0][1]


def collect_identity(job: IdentityJob, spec: RunSpec, progress: Callable[[int, int], None] | None = None) -> dict:
    """Train and write one identity; its record, or {"status": "failed", "kind", "reason"}.
    `progress(done, total)` hears of the training steps.

    A broken identity (no photos, an unreadable photo, no face, a trainer error) fails alone; a
    problem of the whole run (the trainer package, the base model) raises, since it fails them all."""
    host = host_for(spec)
    started = time.perf_counter()
    try:
        return _train_and_write(job, spec, host, started, progress)
    except Skip as skip:
        return {"id": job.id, "status": "failed", "kind": skip.kind, "reason": str(skip)}
    except (HypernetError, OSError, RuntimeError, ValueError) as exc:
        kind = "invalid input" if isinstance(exc, HypernetError) else "training error"
        reason = one_line(str(exc) or type(exc).__name__, 500)
        if not isinstance(exc, HypernetError):
            reason += " | " + one_line(traceback.format_exc(limit=-2), 300)
        return {"id": job.id, "status": "failed", "kind": kind, "reason": reason}


def _train_and_write(job: IdentityJob, spec: RunSpec, host: TrainerHost, started: float, progress) -> dict:
    if not job.photos:
        raise Skip("no photos", "the folder holds no reference photos")
    for i, photo in enumerate(job.photos, 1):
        try:  # the library's reader: EXIF, pixel budget, one-line reasons; the trainer then crops and scales
            read_image(photo)
        except HypernetError as exc:
            raise Skip("unreadable photo", f"photo {i} of {len(job.photos)}: {exc}") from exc
    embedding = None
    if host.face is not None:
        folder = IdentityFolder(job.id, Path(job.photos[0]).parent, [], [Path(p) for p in job.photos], None)
        embedding = embed_photos(folder, host.face)
    result = host.trainer.train([Path(p) for p in job.photos], job.captions, job.seed,
                                init_lora=host.init_lora, progress=progress, should_stop=None)
    weights = lora_from_state_dict(result.state_dict, source=f"the LoRA trained for {job.id}")
    problem = layout_difference(layout_from_lora(weights, host.layout.base_model), host.layout)
    if problem:
        raise HypernetError(f"the trainer returned a LoRA that is not of layout {spec.layout_name}: {problem}")
    record = {
        "id": job.id, "status": "done", "steps": int(result.steps), "final_loss": float(result.loss),
        "base_loss": float(result.base_loss), "initial_loss": float(result.initial_loss), "seed": job.seed, "train_seconds": float(result.seconds),
        "seconds": round(time.perf_counter() - started, 3), "base_model": Path(spec.base_checkpoint).name,
        "base_sha256": spec.base_sha256, "layout": spec.layout_name, "captions": job.captions,
        "photos": [Path(p).name for p in job.photos], "init_lora": spec.init_lora and Path(spec.init_lora).name,
        "generator": GENERATOR, "key": spec.key(),
    }
    _write_folder(job, spec, weights, embedding, record, host)
    return record


def _write_folder(job: IdentityJob, spec: RunSpec, weights, embedding, record: dict, host: TrainerHost) -> None:
    """Everything into OUT/.partial-<id>, then one rename: the folder is complete or absent."""
    out = Path(spec.out)
    final, partial = out / job.id, out / f"{PARTIAL_PREFIX}{job.id}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_lora(partial / LORA_FILE, weights, base_model=host.layout.base_model, metadata={
            "collect_identity": job.id, "collect_seed": str(job.seed), "collect_steps": str(record["steps"]),
            "collect_base_sha256": spec.base_sha256})
        for source in [*job.photos, *job.caption_files]:
            link_or_copy(Path(source), partial / Path(source).name, spec.link_photos)
        if embedding is not None:
            save_safetensors_atomic({"embedding": embedding}, partial / EMBEDDING_FILE,
                                    {"embedding_model": host.face.name})
        (partial / RECORD_FILE).write_text(json.dumps(record, indent=1))
        os.rename(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

