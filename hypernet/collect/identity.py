"""The per-identity code path: every runner (in-process, worker processes, Ray tasks) calls
`collect_jobs`, which trains one LoRA at a time (`collect_identity`) or a group of identities in
one batched loop (`collect_group`) and writes each identity's folder atomically.

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
            class_images=tuple(spec.settings.class_images), eval_draws=spec.settings.eval_draws,
            # only when asked: a trainer package of the older interface knows no schedule
            **({} if spec.settings.lr_schedule == "constant" else {"lr_schedule": spec.settings.lr_schedule}))
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
        embedding = _check_photos(job, host)
        result = host.trainer.train([Path(p) for p in job.photos], job.captions, job.seed,
                                    init_lora=host.init_lora, progress=progress, should_stop=None)
        return _write_identity(job, spec, host, result, embedding, started)
    except _FAILURES as exc:
        return _failure(job, exc)


def collect_jobs(jobs: list[IdentityJob], spec: RunSpec, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """The runners' unit of work: one identity at a time (`identities_per_step` 1, the trainer's
    one-identity loop), or every job of `jobs` as one group trained in one batched loop."""
    if spec.identities_per_step == 1:
        return [collect_identity(job, spec, progress) for job in jobs]
    return collect_group(jobs, spec, progress)


def collect_group(jobs: list[IdentityJob], spec: RunSpec, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train `jobs` together (the trainer's train_group) and write each; one record per job, in
    order. Each identity's photos and captions are checked and encoded first, so a broken one
    fails alone and the group trains without it."""
    host = host_for(spec)
    started = time.perf_counter()
    records: dict[str, dict] = {}
    members, ready = [], []
    for job in jobs:
        try:
            embedding = _check_photos(job, host)
            members.append(host.trainer.member([Path(p) for p in job.photos], job.captions, job.seed))
        except _FAILURES as exc:
            records[job.id] = _failure(job, exc)
            continue
        ready.append((job, embedding))
    if members:
        results = host.trainer.train_group(members, init_lora=host.init_lora, progress=progress)
        for (job, embedding), result in zip(ready, results):
            try:
                if isinstance(result, Exception):
                    raise result
                records[job.id] = _write_identity(job, spec, host, result, embedding, started, len(members))
            except _FAILURES as exc:
                records[job.id] = _failure(job, exc)
    return [records[job.id] for job in jobs]


_FAILURES = (Skip, HypernetError, OSError, RuntimeError, ValueError)


def _failure(job: IdentityJob, exc: Exception) -> dict:
    if isinstance(exc, Skip):
        return {"id": job.id, "status": "failed", "kind": exc.kind, "reason": str(exc)}
    kind = "invalid input" if isinstance(exc, HypernetError) else "training error"
    reason = one_line(str(exc) or type(exc).__name__, 500)
    if not isinstance(exc, HypernetError):
        reason += " | " + one_line(traceback.format_exc(limit=-2), 300)
    return {"id": job.id, "status": "failed", "kind": kind, "reason": reason}


def _check_photos(job: IdentityJob, host: TrainerHost):
    """Skip for an identity without readable photos (or faces); its embedding when faces are asked for."""
    if not job.photos:
        raise Skip("no photos", "the folder holds no reference photos")
    for i, photo in enumerate(job.photos, 1):
        try:  # the library's reader: EXIF, pixel budget, one-line reasons; the trainer then crops and scales
            read_image(photo)
        except HypernetError as exc:
            raise Skip("unreadable photo", f"photo {i} of {len(job.photos)}: {exc}") from exc
    if host.face is None:
        return None
    folder = IdentityFolder(job.id, Path(job.photos[0]).parent, [], [Path(p) for p in job.photos], None)
    return embed_photos(folder, host.face)


def _write_identity(job: IdentityJob, spec: RunSpec, host: TrainerHost, result, embedding, started: float,
                    group_size: int = 1) -> dict:
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
    if spec.identities_per_step > 1:  # train_seconds is then the group's time over its size
        record["group_size"] = group_size
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
        elif job.photos and (Path(job.photos[0]).parent / EMBEDDING_FILE).is_file():
            # An embedding the identity folder already has (the miniature's typeface embeddings,
            # a collection made elsewhere) travels with it, so `dataset` needs no face model.
            shutil.copyfile(Path(job.photos[0]).parent / EMBEDDING_FILE, partial / EMBEDDING_FILE)
        (partial / RECORD_FILE).write_text(json.dumps(record, indent=1))
        os.rename(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

