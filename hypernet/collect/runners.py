"""Where identities are trained: in this process, in N worker processes, or as Ray tasks.

Each runner yields one record per job as jobs finish, all through identity.collect_jobs, so a
LoRA does not depend on where it was trained. The unit of work is a group of
`spec.identities_per_step` jobs (one job by default). A worker process loads the base model
once (identity.host_for) and trains group after group with it.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..common.comfy_side import PACK_ROOT
from ..common.messages import one_line
from ..errors import HypernetError
from .identity import collect_jobs
from .jobs import IdentityJob, RunSpec



def _crashed(job: IdentityJob, what: str) -> dict:
    return {"id": job.id, "status": "failed", "kind": "worker died",
            "reason": f"{what} while training it (out of memory, or killed); re-run collect to retry it"}


def run_here(jobs: list[IdentityJob], spec: RunSpec, step_progress=None) -> Iterator[dict]:
    """In this process; `step_progress(identity)` may give a callback for its training steps."""
    for group in spec.groups(jobs):
        name = group[0].id if len(group) == 1 else f"{group[0].id} +{len(group) - 1}"
        yield from collect_jobs(group, spec, step_progress(name) if step_progress else None)


def run_processes(jobs: list[IdentityJob], spec: RunSpec, workers: int) -> Iterator[dict]:
    """`workers` processes (spawned: a clean interpreter each, no forked torch state)."""
    context = multiprocessing.get_context("spawn")
    # No initializer: a failing one breaks the pool silently, while the first job's failing
    # setup (no trainer package, an unloadable base model) raises its own message here.
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(collect_jobs, group, spec): group for group in spec.groups(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    try:
                        yield from future.result()
                    except BrokenProcessPool:
                        yield from (_crashed(job, "a worker process died") for job in group)
        finally:
            for future in pending:
                future.cancel()


RAY_MISSING = ("--ray needs the `ray` package, which is not installed: pip install 'ray>=2.9' "
               "(or the pack's extra: pip install '.[ray]'), then run collect again")


def import_ray():
    try:
        import ray
    except ImportError:
        raise HypernetError(RAY_MISSING) from None
    return ray


def start_ray(address: str, cpus: int | None):
    """Connect to Ray: `local` starts a private instance with `cpus` CPUs, `auto` joins the cluster
    this machine belongs to (`ray start`), anything else is a cluster address. Workers get this
    pack's folder on their path and the caller's COMFYUI_PATH: the cluster's machines need the
    pack, ComfyUI and the folders of the run at the same paths (shared storage)."""
    ray = import_ray()
    if ray.is_initialized():  # the caller's own Ray session
        return ray, False
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PACK_ROOT), os.environ.get("PYTHONPATH")]))}
    if os.environ.get("COMFYUI_PATH"):
        env["COMFYUI_PATH"] = str(Path(os.environ["COMFYUI_PATH"]).resolve())
    options = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
    try:
        if address == "local":
            ray.init(num_cpus=cpus, **options)
        else:
            ray.init(address=address, **options)
    except ConnectionError as exc:
        where = "on this machine" if address == "auto" else f"at {address}"
        raise HypernetError(f"no Ray cluster answers {where} ({one_line(str(exc), 160)}); start one with "
                            "`ray start --head`, give its address, or use --ray local for one here") from None
    return ray, True


def run_ray(jobs: list[IdentityJob], spec: RunSpec, address: str, workers: int | None) -> Iterator[dict]:
    """One Ray task per group of identities (one identity by default): a GPU each where the cluster has GPUs, else `spec.threads` CPUs.
    Task processes are kept (max_calls=0), so each loads the base model once; `workers` caps the
    tasks in flight (default: as many as the cluster's resources allow)."""
    ray, started = start_ray(address, (workers or 1) * spec.threads)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=0 if gpus else spec.threads, num_gpus=gpus, max_calls=0,
                          max_retries=1)(collect_jobs)
        queue, pending = deque(spec.groups(jobs)), {}
        window = workers or len(queue)
        while queue or pending:
            while queue and len(pending) < window:
                group = queue.popleft()
                pending[task.remote(group, spec)] = group
            done, _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(done[0])
            try:
                yield from ray.get(done[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
                yield from (_crashed(job, "its Ray worker died") for job in group)
            except ray.exceptions.RayTaskError as exc:  # the worker's own one-line error, not Ray's traceback
                if isinstance(exc.cause, HypernetError):
                    raise exc.cause from None
                raise
    finally:
        if started:
            ray.shutdown()
