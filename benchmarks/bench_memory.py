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
from _bench import Stats
from _memory import PeakRss, rss_mib

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
    return rss_mib()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sdxl-attn-r4", choices=list(bench_personalize.LAYOUTS))
    parser.add_argument("--runs", type=int, default=5, help="sample + decode runs whose peak is measured")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    return parser.parse_args()


def load_networks(work: Path, layout: str, rss: dict[str, float]):
    """Face analyzer + one embedded photo, then Load Hypernet; RSS before and after each."""
    gc.collect()
    rss["start"] = rss_mib()
    analyzer, image = bench_personalize.face_setup(work)
    face_value, _ = _bench.pack_module("nodes.face_nodes").FaceEmbed.execute(analyzer, image, False)
    rss["after face"] = rss_mib()
    name = bench_personalize.save_random_hypernet(work, layout, face_value.model_name)
    gc.collect()
    rss["before load"] = rss_mib()
    hypernet, _ = _bench.pack_module("nodes.hypernet_nodes").LoadHypernet.execute(name)
    rss["loaded"] = rss_mib()
    return analyzer, face_value, hypernet


def sample_and_decode(hypernet, face_value, args: argparse.Namespace) -> tuple[Stats, tuple]:
    """Peak RSS above the loaded state during Sample LoRA + Decode LoRA, over the runs after a
    warm-up; returns it with the last outputs, which ComfyUI's cache would keep."""
    hypernet_nodes = _bench.pack_module("nodes.hypernet_nodes")
    peaks, outputs = [], None
    for run in range(args.runs + 1):
        outputs = None  # ComfyUI replaces a node's cached output when it runs again
        gc.collect()
        with PeakRss() as memory:
            (latent,) = hypernet_nodes.SampleLoRA.execute(hypernet, face_value, run, args.steps, args.guidance, 0.0)
            (lora,) = hypernet_nodes.DecodeLoRA.execute(hypernet, latent)
        outputs = (latent, lora)
        del latent, lora
        if run > 0:
            peaks.append(memory.extra)
    return Stats(tuple(peaks)), outputs


def still_there(refs: dict[str, weakref.ref]) -> dict[str, bool]:
    return {name: ref() is not None for name, ref in refs.items()}


def main() -> None:
    args = parse_args()
    command = _bench.command_line()
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        analyzer, face_value, hypernet = load_networks(Path(tmp), args.layout, rss)
        sizes = network_sizes(hypernet.hypernet)
        refs = {"hypernet": weakref.ref(hypernet.hypernet), "face analyzer": weakref.ref(analyzer)}
        peak, outputs = sample_and_decode(hypernet, face_value, args)
        rss["after runs"] = rss_mib()

        free_path_step()
        rss["unloaded"], alive_after_unload = rss_mib(), still_there(refs)
        # free_memory: the executor's caches go, and with them every node output.
        del hypernet, outputs, face_value, analyzer
        free_path_step()
        rss["freed"], alive_after_free = rss_mib(), still_there(refs)
        trimmed = malloc_trim()
    report(args, command, sizes, peak, rss, (alive_after_unload, alive_after_free), trimmed)


def network_sizes(module) -> dict[str, int]:
    counts = module.parameter_counts()
    return {**counts, "buffers": sum(b.numel() for b in module.buffers())}


def report(args, command: str, sizes: dict[str, int], peak: Stats, rss: dict[str, float],
           alive: tuple[dict[str, bool], dict[str, bool]], trimmed: float | None) -> None:
    def state(flags: dict[str, bool]) -> str:
        return ", ".join(f"{name} {'still in memory' if flag else 'freed'}" for name, flag in flags.items())

    tensor_mib = (sizes["autoencoder"] + sizes["prior"] + sizes["buffers"]) * 4 / 2**20
    _bench.heading(f"Memory of the pack's networks at {args.layout} (resident set of the process, MiB)", command)
    print(f"Hypernet: autoencoder {sizes['autoencoder']:,} + prior {sizes['prior']:,} parameters, "
          f"{sizes['buffers']:,} normaliser values: {tensor_mib:.0f} MiB of float32 tensors. Sampling: {args.steps} "
          f"steps, guidance {args.guidance}; peak over {args.runs} runs after a warm-up.\n")
    rows = [
        ("ComfyUI + pack imported, nothing loaded", f"{rss['start']:.0f}", ""),
        ("face analyzer loaded and one photo embedded (generated stand-in models, not antelopev2)",
         f"{rss['after face']:.0f}", f"+{rss['after face'] - rss['start']:.0f}"),
        ("Load Hypernet", f"{rss['loaded']:.0f}", f"+{rss['loaded'] - rss['before load']:.0f}"),
        ("**peak during Sample LoRA + Decode LoRA, above the loaded state** (median (min-max))", "",
         f"**+{peak.fmt(digits=0)}**"),
        ("after the runs (last latent and LORA kept, as ComfyUI's cache does)", f"{rss['after runs']:.0f}",
         f"+{rss['after runs'] - rss['loaded']:.0f}"),
        (f"free path 1, unload_models: {state(alive[0])}", f"{rss['unloaded']:.0f}",
         f"{rss['unloaded'] - rss['after runs']:+.0f}"),
        (f"free path 2, free_memory (node outputs dropped): {state(alive[1])}", f"{rss['freed']:.0f}",
         f"{rss['freed'] - rss['unloaded']:+.0f}"),
    ]
    if trimmed is not None:
        rows.append(("then glibc's malloc_trim(0), which ComfyUI does not call: what the allocator kept for reuse",
                     f"{trimmed:.0f}", f"{trimmed - rss['freed']:+.0f}"))
    _bench.table(("state", "RSS MiB", "change MiB"), rows)
    print("On the CPU, unloading moves a model to its offload device, which is the CPU: it stays while the "
          "node output that holds it is cached. RSS may drop by less than the tensors freed when the C "
          "allocator keeps freed pages for reuse.\n", flush=True)


if __name__ == "__main__":
    main()
