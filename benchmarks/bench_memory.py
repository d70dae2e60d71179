"""Memory of the pack's own networks: resident size of a loaded hypernet, peak while sampling
and decoding, and whether ComfyUI's free path gives it back.

In-process, in a real ComfyUI on the CPU, through the pack's nodes: Load Hypernet (a random
`sdxl`-preset hypernet for sdxl-attn-r4 by default), then Sample LoRA (25 steps, guidance 3)
+ Decode LoRA several times, then the two steps of ComfyUI's free path as its prompt worker
(main.py) runs them for POST /free:

1. `unload_models`: comfy.model_management.unload_all_models(), gc.collect(), soft_empty_cache();
2. `free_memory`: the executor's output cache is reset (here: the node outputs are dropped),
   then the same calls.

After each, the table says whether the hypernet module still exists (a weak reference) and the
process's resident memory. The face analyzer (generated stand-in models) is checked the same way.

    .venv/bin/python benchmarks/bench_memory.py [--layout sdxl-attn-r4] [--runs 5]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import weakref
from pathlib import Path

import _bench  # noqa: F401  (first: ComfyUI before the pack)
from _bench import PeakRss, Stats

import torch  # noqa: E402

import bench_personalize  # noqa: E402


def free_path_step() -> None:
    """What ComfyUI's prompt worker does after POST /free (the output cache is dropped by the caller)."""
    comfy = _bench.comfy()
    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()


def malloc_trim() -> float | None:
    """RSS after asking glibc to hand freed heap pages back to the OS (None without glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _bench.rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sdxl-attn-r4", choices=list(bench_personalize.LAYOUTS))
    parser.add_argument("--runs", type=int, default=5, help="sample + decode runs whose peak is measured")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    command = _bench.command_line()
    hypernet_nodes = _bench.pack_module("nodes.hypernet_nodes")
    face_nodes = _bench.pack_module("nodes.face_nodes")

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        work = Path(tmp)
        gc.collect()
        start = _bench.rss_mib()
        analyzer, image = bench_personalize.face_setup(work)
        face_value, _ = face_nodes.FaceEmbed.execute(analyzer, image, False)
        after_face = _bench.rss_mib()
        name = bench_personalize.save_random_hypernet(work, args.layout, face_value.model_name)
        gc.collect()
        before_load = _bench.rss_mib()
        hypernet, _ = hypernet_nodes.LoadHypernet.execute(name)
        loaded = _bench.rss_mib()
        module = hypernet.hypernet
        counts = module.parameter_counts()
        buffers = sum(b.numel() for b in module.buffers())
        tensor_mib = (sum(counts.values()) + buffers) * 4 / 2**20
        hypernet_ref, analyzer_ref = weakref.ref(module), weakref.ref(analyzer)
        del module

        peaks = []
        outputs = None
        for run in range(args.runs + 1):
            outputs = None  # ComfyUI replaces a node's cached output when it runs again
            gc.collect()
            with PeakRss() as memory:
                (latent,) = hypernet_nodes.SampleLoRA.execute(hypernet, face_value, run, args.steps, args.guidance, 0.0)
                (lora,) = hypernet_nodes.DecodeLoRA.execute(hypernet, latent)
            outputs = (latent, lora)
            if run > 0:
                peaks.append(memory.extra)
        peak = Stats(tuple(peaks))
        after_runs = _bench.rss_mib()

        free_path_step()
        unloaded = _bench.rss_mib()
        alive_after_unload = (hypernet_ref() is not None, analyzer_ref() is not None)

        # free_memory: the executor's caches go, and with them every node output.
        del hypernet, outputs, latent, lora, face_value, analyzer
        free_path_step()
        freed = _bench.rss_mib()
        alive_after_free = (hypernet_ref() is not None, analyzer_ref() is not None)
        trimmed = malloc_trim()

    def alive(flag: bool) -> str:
        return "still in memory" if flag else "freed"

    _bench.heading(f"Memory of the pack's networks at {args.layout} (resident set of the process, MiB)", command)
    print(f"Hypernet: autoencoder {counts['autoencoder']:,} + prior {counts['prior']:,} parameters, "
          f"{buffers:,} normaliser values: {tensor_mib:.0f} MiB of float32 tensors. Sampling: {args.steps} steps, "
          f"guidance {args.guidance}; peak over {args.runs} runs after a warm-up.\n")
    rows = [
        ("ComfyUI + pack imported, nothing loaded", f"{start:.0f}", ""),
        ("face analyzer loaded and one photo embedded (generated stand-in models, not antelopev2)",
         f"{after_face:.0f}", f"+{after_face - start:.0f}"),
        ("Load Hypernet", f"{loaded:.0f}", f"+{loaded - before_load:.0f}"),
        (f"**peak during Sample LoRA + Decode LoRA, above the loaded state** (median (min-max))", "",
         f"**+{peak.fmt(digits=0)}**"),
        ("after the runs (last latent and LORA kept, as ComfyUI's cache does)", f"{after_runs:.0f}",
         f"+{after_runs - loaded:.0f}"),
        (f"free path 1, unload_models: hypernet {alive(alive_after_unload[0])}, face analyzer "
         f"{alive(alive_after_unload[1])}", f"{unloaded:.0f}", f"{unloaded - after_runs:+.0f}"),
        (f"free path 2, free_memory (node outputs dropped): hypernet {alive(alive_after_free[0])}, face analyzer "
         f"{alive(alive_after_free[1])}", f"{freed:.0f}", f"{freed - unloaded:+.0f}"),
    ]
    if trimmed is not None:
        rows.append(("then glibc's malloc_trim(0), which ComfyUI does not call: what the allocator kept for reuse",
                     f"{trimmed:.0f}", f"{trimmed - freed:+.0f}"))
    _bench.table(("state", "RSS MiB", "change MiB"), rows)
    print("On the CPU, unloading moves a model to its offload device, which is the CPU: it stays while the "
          "node output that holds it is cached. RSS may drop by less than the tensors freed when the C "
          "allocator keeps freed pages for reuse.\n", flush=True)


if __name__ == "__main__":
    main()
