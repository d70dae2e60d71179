"""Shared by the benchmark scripts: repeated timing with its spread, the machine and commit a
table was measured on, and a real ComfyUI with this pack imported in-process.

Import this module before `hypernet` or the pack: it puts ComfyUI first on sys.path, so
ComfyUI's `nodes` module wins over this repository's `nodes/` folder (as tests/conftest.py does).
"""
from __future__ import annotations

import importlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # comfy_support, face_models: the same stand-ins the tests use

import comfy_support  # noqa: E402

comfy_support.prepare_comfy()
sys.path.append(str(ROOT))  # after ComfyUI, so `import nodes` stays ComfyUI's

import torch  # noqa: E402


# --- repeated measurements -------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """Repeated measurements of one quantity: median and spread (min-max and interquartile range)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 2:
            return self.values[0], self.values[0]
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return q[0], q[2]

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        """'median (min-max)' in the unit given by scale (1000 turns seconds into ms)."""
        m, lo, hi = (v * scale for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def repeat(fn: Callable[[], object], runs: int, warmup: int = 1) -> Stats:
    """Wall-clock seconds of fn over `runs` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return Stats(tuple(times))


class Timer:
    """`with Timer() as t: ...` then t.seconds."""

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


# --- where it ran ------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+uncommitted changes" if dirty else "")


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> str:
    load = load_average()
    gpu = gpu_name() or "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {memory_gib():.0f} GiB RAM, {gpu}; "
            f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}; load average {load}; "
            f"commit {git_commit()}")


def heading(title: str, command: str, measured_on: str | None = None) -> None:
    """A table's title, the machine it ran on (`machine()` now, or as taken before a long
    measurement: `measured_on`) and the command that made it."""
    print(f"\n### {title}\n")
    print(f"Machine: {measured_on or machine()}.  ")
    print(f"Command: `{command}`\n", flush=True)


def table(header: tuple[str, ...] | list[str], rows: list[tuple | list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(flush=True)


def command_line() -> str:
    """How this script was started, as a reader would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


# --- ComfyUI and the pack, in-process -----------------------------------------------------------

def comfy():
    """ComfyUI's `comfy` package, on the CPU."""
    return comfy_support.import_comfy()


def pack():
    """This pack imported the way ComfyUI imports a custom node folder (as tests/conftest.py)."""
    return comfy_support.import_pack()


def pack_module(dotted: str):
    """A module of the pack as ComfyUI sees it, e.g. pack_module('nodes.lora_nodes')."""
    return importlib.import_module(f"{pack().__name__}.{dotted}")


def random_hypernet(layout, train_preset: str, embedding_model: str = "x", seed: int = 0, library: str = "hypernet"):
    """A Hypernet of a training preset's architecture with random weights: speed does not depend
    on training. `library` is the package whose classes build it: `hypernet` (the library alone,
    no ComfyUI) or the pack's own copy, `pack().__name__ + ".hypernet"`, which the nodes use."""
    cfg = importlib.import_module(f"{library}.pipeline.training").load_train_config(train_preset)
    model_mod = importlib.import_module(f"{library}.model.hypernet")
    torch.manual_seed(seed)
    model = model_mod.Hypernet(model_mod.HypernetConfig(
        layout=layout, embedding_model=embedding_model, autoencoder=cfg.autoencoder, prior=cfg.prior,
        diffusion=cfg.diffusion))
    # The prior's output layer starts at zero; small random values make the samples non-trivial.
    torch.nn.init.normal_(model.prior.latent_out.weight, std=0.02)
    return model.eval()


def register_folder(kind: str, folder: Path) -> None:
    """Point ComfyUI's model folder `kind` (loras, lora_hypernets) at `folder` only."""
    import folder_paths
    extensions = folder_paths.folder_names_and_paths.get(kind, ([], {".safetensors"}))[1]
    folder_paths.folder_names_and_paths[kind] = ([str(folder)], extensions)
    folder_paths.filename_list_cache.clear()


# --- base models to patch -------------------------------------------------------------------------

ATTENTION_WEIGHT = re.compile(r"^diffusion_model\..*transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)\.weight$")
_sdxl_cache: dict = {}


def base_model(unet: str, weight_dtype: torch.dtype = torch.float16):
    """A ComfyUI MODEL (ModelPatcher) whose attention weights are real tensors.

    "tiny": the tests' tiny SDXL-architecture UNet, every weight real. "sdxl": ComfyUI's real
    SDXL UNet (2.57 B parameters) on the meta device, with only the attention projections that
    LoRAs patch made real (`weight_dtype`, constant values: the arithmetic costs the same for
    any values), so patch arithmetic runs at SDXL's real shapes without 10 GB of weights."""
    comfy_ = comfy()
    cpu = torch.device("cpu")
    if unet == "tiny":
        return comfy_support.tiny_sdxl_patcher(seed=0)
    if unet != "sdxl":
        raise ValueError(f"unknown base model {unet!r}")
    key = ("sdxl", weight_dtype)
    if key not in _sdxl_cache:
        model = comfy_support.build_sdxl_model(comfy_support.REAL_SDXL_UNET, device="meta")
        for name, param in list(model.state_dict(keep_vars=True).items()):
            if ATTENTION_WEIGHT.match(name):
                comfy_.utils.set_attr_param(model, name, torch.full(param.shape, 0.01, dtype=weight_dtype))
        _sdxl_cache[key] = comfy_.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    return _sdxl_cache[key]


def real_attention_values(patcher) -> int:
    return sum(v.numel() for k, v in patcher.model.state_dict().items() if ATTENTION_WEIGHT.match(k) and v.device.type != "meta")


def patch_weights(patcher) -> int:
    """ComfyUI's own patch arithmetic for every patched weight, as when a KSampler loads the
    MODEL (ModelPatcher.patch_weight_to_device -> comfy.lora.calculate_weight); returns how many."""
    cpu = torch.device("cpu")
    keys = list(patcher.patches)
    for key in keys:
        patcher.patch_weight_to_device(key, device_to=cpu)
    return len(keys)


def unpatch_weights(patcher) -> None:
    patcher.unpatch_model()
