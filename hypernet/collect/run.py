"""collect(): plan the run, train the identities where asked, report, and record the run."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..common.files import sha256_file
from ..errors import HypernetError
from ..lora.presets import load_layout
from .jobs import (RUN_FILE, RunSpec, TrainingSettings, check_class_images, check_init_lora, file_sha256,
                   plan_run)
from .report import Progress, RunResult
from .runners import import_ray, run_here, run_processes, run_ray

# The trainer package: top-level, beside `hypernet`, since it needs ComfyUI (see identity.py).
TRAINER_PACKAGE = "lora_training"


def collect(src: str | os.PathLike, base: str | os.PathLike, layout: str, out: str | os.PathLike, *,
            settings: TrainingSettings = TrainingSettings(), workers: int | None = None, ray: str | None = None,
            init_lora: str | os.PathLike | None = None, face_model: str | os.PathLike | None = None,
            preload: tuple[str, ...] = (), threads: int | None = None, link_photos: bool = True,
            trainer: str = TRAINER_PACKAGE, progress: bool = True, identities_per_step: int = 1) -> RunResult:
    """Train one LoRA per identity folder of `src` on the checkpoint `base`, restricted to the
    layout preset or JSON file `layout`, into the collection `out` (see hypernet.collect).

    `workers` processes on this machine (default 1: in this process), or with `ray` ("local",
    "auto" or a cluster address) one Ray task per identity with at most `workers` in flight.
    `threads` is torch's thread count per worker (default: this machine's cores / workers).
    `identities_per_step` > 1 trains that many identities together in one batched loop (the
    trainer's train_group; no class images): each a LoRA as if trained alone, in less time
    where per-step overhead dominates (small latents)."""
    if not Path(base).is_file():
        raise HypernetError(f"base checkpoint {base} does not exist; give the .safetensors checkpoint file")
    if workers is not None and workers < 1:
        raise HypernetError(f"--workers must be 1 or more, not {workers}")
    if identities_per_step < 1:
        raise HypernetError(f"--identities-per-step must be 1 or more, not {identities_per_step}")
    if identities_per_step > 1 and settings.class_images:
        raise HypernetError("--class-images cannot be combined with --identities-per-step above 1 (the group loop "
                            "has no prior preservation); train one identity per step")
    if ray is not None:
        import_ray()  # a missing package is said before the base model is hashed
    threads = threads or max(1, (os.cpu_count() or 1) // (workers or 1))
    layout_value = load_layout(layout)
    if init_lora is not None:
        check_init_lora(str(init_lora), layout_value)
    check_class_images(settings.class_images)
    spec = RunSpec(
        src=str(src), out=str(out), base_checkpoint=str(Path(base).resolve()), base_sha256=sha256_file(base),
        layout=layout_value.to_dict(), layout_name=layout, settings=settings, trainer=trainer,
        init_lora=init_lora and str(Path(init_lora).resolve()), init_sha256=file_sha256(init_lora, "--init LoRA"),
        face_model=face_model and str(Path(face_model).resolve()), preload=tuple(preload), threads=threads,
        link_photos=link_photos, identities_per_step=identities_per_step)
    plan = plan_run(spec)
    result = RunResult(str(out), finished_before=plan.finished)
    bar = Progress(len(plan.jobs), len(plan.finished), progress)
    if ray is not None:
        records = run_ray(plan.jobs, spec, ray, workers)
    elif (workers or 1) > 1:
        records = run_processes(plan.jobs, spec, workers)
    else:
        records = run_here(plan.jobs, spec, bar.steps)
    try:
        for record in records:
            (result.trained if record["status"] == "done" else result.failed).append(record)
            bar.update(record)
    finally:
        bar.close()
        _write_run_file(spec, result)
    return result


def _write_run_file(spec: RunSpec, result: RunResult) -> None:
    path = Path(spec.out) / RUN_FILE
    run = {"src": spec.src, "base": spec.base_checkpoint, "key": spec.key(), "settings": asdict(spec.settings),
           "trained": [r["id"] for r in result.trained], "finished_before": result.finished_before,
           "failed": result.failed}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(run, indent=1))
    os.replace(tmp, path)
