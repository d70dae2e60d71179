"""Apply overhead: our in-memory LORA (Apply LoRA) vs the same LoRA loaded from a .safetensors
file by ComfyUI's stock LoraLoaderModelOnly, side by side in one process.

"Apply" in ComfyUI has two parts, and both are timed for both paths:

1. the node: ours checks the layout against the MODEL, then `comfy.sd.load_lora_for_models`
   (clone + add_patches: lazy, no arithmetic); the stock node reads the file
   (`comfy.utils.load_torch_file`), then calls the same function;
2. the patch arithmetic, when the KSampler loads the MODEL: `ModelPatcher.patch_weight_to_device`
   -> `comfy.lora.calculate_weight` for every patched weight.

Both nodes are timed cold (a fresh LoraLoader object, which reads the file; our shape cache
emptied) and warm (the same LoraLoader object, which keeps the file's tensors, as ComfyUI keeps
node objects; our shape cache filled): warm is what a second face on the same MODEL costs.
Node + patch run once per process (a fresh one each time), so the peak memory, the process's
resident high-water mark during node + patch above what it held before, is that path's own.

Peak memory is measured twice. With glibc's default allocator, the high-water mark also counts
freed blocks the heap has not handed back yet; which ones depends on the order of earlier
allocations, so single runs of the same path varied 1.0-1.5x. The memory the path itself needs is
measured in separate children with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=65536): every
large tensor then gets its own mapping, returned when freed, so the mark follows the live bytes
and repeats to within a MiB. That run's arithmetic is slower (a page fault per fresh mapping), so
times always come from the default-allocator children. The MODEL is ComfyUI's real SDXL UNet on the meta device with real fp16 attention
weights (see _bench.base_model), or the tests' tiny UNet for --layout tiny-attn-r4.

    .venv/bin/python benchmarks/bench_apply.py [--layout sdxl-attn-r4] [--runs 10] [--patch-runs 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import _bench  # noqa: F401  (first: ComfyUI before the pack)
from _bench import Stats, Timer
from _memory import PeakRss
from random_weights import random_kohya_state  # noqa: E402  (tests/, put on the path by _bench)

import torch  # noqa: E402

BASES = {"tiny-attn-r4": "tiny", "sdxl-attn-r4": "sdxl", "sdxl-qv-r1": "sdxl"}
TARGET_RATIO = 1.1
# glibc: allocations above 64 KiB get their own mapping, unmapped on free (see the docstring)
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
OURS, STOCK = "ours: Apply LoRA (in-memory LORA)", "stock: LoraLoaderModelOnly (.safetensors)"


def random_lora(layout_name: str, seed: int = 0):
    """A kohya LORA value of the layout with random factors (the arithmetic does not care)."""
    layout = _bench.pack_module("hypernet.lora.presets").preset(layout_name)
    state = random_kohya_state(layout, seed, scale=0.01)
    return _bench.pack_module("nodes.values").LoraValue(state, layout, {"generator": "bench_apply"})


def _paths(lora, base, lora_name: str):
    import nodes as comfy_nodes  # ComfyUI's built-in nodes (LoraLoaderModelOnly)
    lora_nodes = _bench.pack_module("nodes.lora_nodes")
    glue = _bench.pack_module("nodes.comfy_glue")
    stock_node = comfy_nodes.LoraLoaderModelOnly()

    def ours(cold: bool):
        if cold:
            glue._unet_shapes.clear()
        return lora_nodes.ApplyLoRA.execute(base, lora, 1.0)[0]

    def stock(cold: bool):
        node = comfy_nodes.LoraLoaderModelOnly() if cold else stock_node
        return node.load_lora_model_only(base, lora_name, 1.0)[0]

    return {OURS: ours, STOCK: stock}


def _prepare(layout: str, folder: Path):
    from safetensors.torch import save_file
    base = _bench.base_model(BASES[layout])
    lora = random_lora(layout)
    save_file(lora.state_dict, str(folder / "lora.safetensors"), metadata=lora.metadata)
    _bench.register_folder("loras", folder)
    return base, lora


def same_patches(a, b) -> bool:
    """Whether two patched MODELs carry the same patches: keys, strengths and LoRA tensors."""
    def same(x, y) -> bool:
        if torch.is_tensor(x) or torch.is_tensor(y):
            return torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y)
        if isinstance(x, (tuple, list)):
            return isinstance(y, (tuple, list)) and len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
        if hasattr(x, "weights"):  # a comfy.weight_adapter adapter
            return type(x) is type(y) and same(x.weights, y.weights)
        return x == y

    return a.patches.keys() == b.patches.keys() and all(same(a.patches[k], b.patches[k]) for k in a.patches)


def child(layout: str, path: str, folder: Path) -> None:
    """One cold node + patch in a fresh process, so its peak memory is this path's alone."""
    base, lora = _prepare(layout, folder)
    apply = _paths(lora, base, "lora.safetensors")[path]
    gc.collect()
    with PeakRss() as memory:
        with Timer() as node:
            patched = apply(True)
        with Timer() as arithmetic:
            keys = _bench.patch_weights(patched)
    print(json.dumps({"node": node.seconds, "patch": arithmetic.seconds, "peak": memory.extra, "keys": keys,
                      "real_values": _bench.real_attention_values(base),
                      "dtype": str(next(v.dtype for k, v in base.model.state_dict().items()
                                        if _bench.ATTENTION_WEIGHT.match(k)))}))


def run_child(layout: str, path: str, folder: Path, live_memory: bool = False) -> dict:
    env = {**os.environ, **(LIVE_MEMORY_ENV if live_memory else {})}
    result = subprocess.run([sys.executable, __file__, "--layout", layout, "--child", path, "--child-dir", str(folder)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the {path} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def in_turn(run: int) -> list[str]:
    """Both paths interleaved, so both see the same machine load, and in turns first."""
    return [OURS, STOCK] if run % 2 else [STOCK, OURS]


@dataclass
class Measured:
    """Everything the table shows: node seconds per (path, mode), the children's node + patch
    runs per path with the default allocator and with live memory, and whether the patches match."""

    file_mib: float
    node_times: dict[tuple[str, str], list[float]]
    children: dict[str, list[dict]]
    live: dict[str, list[dict]]
    identical: bool

    def node(self, name: str, mode: str) -> Stats:
        return Stats(tuple(self.node_times[(name, mode)]))

    def child(self, name: str, key: str, live: bool = False) -> Stats:
        return Stats(tuple(c[key] for c in (self.live if live else self.children)[name]))

    def patch_all(self) -> Stats:
        # Identical patches (checked) make identical arithmetic: its time differs between the
        # paths by machine noise only, so totals use the median over both paths' runs.
        return Stats(tuple(c["patch"] for name in (OURS, STOCK) for c in self.children[name]))

    def total(self, name: str) -> float:
        return self.node(name, "cold").median + self.patch_all().median


def time_nodes(paths: dict, runs: int) -> dict[tuple[str, str], list[float]]:
    """Node seconds per (path, cold/warm) over `runs` runs after one warm-up run."""
    node_times: dict[tuple[str, str], list[float]] = {}
    for run in range(runs + 1):
        for mode in ("cold", "warm"):
            for name in in_turn(run):
                with Timer() as t:
                    patched = paths[name](mode == "cold")
                if run > 0:  # run 0 warms up
                    node_times.setdefault((name, mode), []).append(t.seconds)
                del patched
    return node_times


def measure(layout: str, runs: int, patch_runs: int) -> tuple[object, Measured]:
    """The in-process node timings, then node + patch per path in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="bench_apply_") as tmp:
        folder = Path(tmp)
        base, lora = _prepare(layout, folder)
        file_mib = (folder / "lora.safetensors").stat().st_size / 2**20
        paths = _paths(lora, base, "lora.safetensors")
        node_times = time_nodes(paths, runs)
        identical = same_patches(paths[OURS](True), paths[STOCK](True))
        del paths, base
        gc.collect()
        children: dict[str, list[dict]] = {OURS: [], STOCK: []}
        live: dict[str, list[dict]] = {OURS: [], STOCK: []}
        for run in range(patch_runs):
            for name in in_turn(run):
                children[name].append(run_child(layout, name, folder))
                live[name].append(run_child(layout, name, folder, live_memory=True))
    return lora, Measured(file_mib, node_times, children, live, identical)


def ratios(m: Measured) -> dict[str, float]:
    """Ours / stock, medians."""
    return {
        "cold": m.node(OURS, "cold").median / m.node(STOCK, "cold").median,
        "warm": m.node(OURS, "warm").median / m.node(STOCK, "warm").median,
        "patch": m.child(OURS, "patch").median / m.child(STOCK, "patch").median,
        "total": m.total(OURS) / m.total(STOCK),
        "peak": m.child(OURS, "peak").median / m.child(STOCK, "peak").median,
        "live": m.child(OURS, "peak", live=True).median / m.child(STOCK, "peak", live=True).median,
    }


def report(args: argparse.Namespace, command: str, lora, m: Measured) -> None:
    first = m.children[OURS][0]
    _bench.heading(f"Apply overhead at {args.layout}: our in-memory LORA vs the stock LoraLoader from a file "
                   f"(seconds, median (min-max))", command)
    print(f"LoRA: {len(lora.layout)} modules, {lora.layout.num_values:,} values, file {m.file_mib:.1f} MiB. "
          f"Weights patched: {first['keys']}, {first['real_values']:,} real values ({first['dtype']}). "
          f"Both paths give {'identical' if m.identical else '**different**'} patches (same keys, factors, alpha and "
          f"strength), so ComfyUI does the same arithmetic for both. Node + patch runs each in a fresh process, so "
          f"the peak memory is that path's own.\n")
    ratio = ratios(m)
    rows = [(name, m.node(name, "cold").fmt(), m.node(name, "warm").fmt(), m.child(name, "patch").fmt(),
             f"{m.total(name):.3f}", m.child(name, "peak", live=True).fmt(digits=0), m.child(name, "peak").fmt(digits=0))
            for name in (OURS, STOCK)]
    rows.append(("**ratio ours / stock (medians)**", f"**{ratio['cold']:.2f}x**", f"**{ratio['warm']:.2f}x**",
                 f"{ratio['patch']:.2f}x", f"**{ratio['total']:.2f}x**", f"**{ratio['live']:.2f}x**",
                 f"{ratio['peak']:.2f}x"))
    _bench.table(("path", f"node, cold ({args.runs} runs)", f"node, warm ({args.runs} runs)",
                  f"patch arithmetic ({args.patch_runs} runs)", "node (cold) + patch (medians; patch over both paths)",
                  "peak +RSS MiB, live (fixed mmap threshold)", "peak +RSS MiB, glibc default"),
                 rows)
    worst = max(ratio["total"], ratio["live"])
    verdict = "met" if worst <= TARGET_RATIO and m.identical else "missed"
    print(f"Target: apply overhead <= {TARGET_RATIO}x the stock LoraLoader path: time (node + patch) "
          f"{ratio['total']:.2f}x, peak memory {ratio['live']:.2f}x (live bytes; {ratio['peak']:.2f}x with glibc's "
          f"default allocator, which also counts freed blocks not yet handed back); **{verdict}**. The node alone: "
          f"{ratio['cold']:.2f}x cold, {ratio['warm']:.2f}x warm.\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sdxl-attn-r4", choices=list(BASES))
    parser.add_argument("--runs", type=int, default=10, help="timed node runs per path and mode, after a warm-up")
    parser.add_argument("--patch-runs", type=int, default=3, help="node + patch runs per path and allocator mode, each in a fresh process")
    parser.add_argument("--child", choices=(OURS, STOCK), help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.layout, args.child, args.child_dir)
        return
    command = _bench.command_line()
    lora, measured = measure(args.layout, args.runs, args.patch_runs)
    report(args, command, lora, measured)


if __name__ == "__main__":
    main()
