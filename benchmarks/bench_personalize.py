"""Personalization latency by stage: reference photo -> patched MODEL ready for the KSampler.

Runs the pack's own node classes in-process in a real ComfyUI (CPU), in graph order: Face Embed,
Sample LoRA (10/25/50 DDIM steps, guidance 3 as the node's default), Decode LoRA, Apply LoRA.
Apply LoRA's output is the patched MODEL the KSampler takes; the weight arithmetic itself runs
when the KSampler loads that MODEL, costs the same as for any LoRA from the stock LoraLoader,
and is measured by bench_apply.py.

- Hypernets have random weights built from the training presets (`tiny` for the tiny layout,
  `sdxl` for SDXL layouts): speed does not depend on training. Load Hypernet runs once, as
  ComfyUI caches its output.
- Face detection + embedding use the small generated stand-ins for antelopev2 that the tests
  use (tests/face_models.py): these are NOT real antelopev2 timings (the real SCRFD-10G and
  ResNet-50 ArcFace models are far larger).
- SDXL layouts are applied to ComfyUI's real SDXL UNet on the meta device (its attention
  weights real, see _bench.base_model); the tiny layout to the tests' tiny SDXL-architecture UNet.

    .venv/bin/python benchmarks/bench_personalize.py [--layouts tiny-attn-r4 sdxl-attn-r4 sdxl-qv-r1] [--runs 5]
"""
from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import _bench  # noqa: F401  (first: ComfyUI before the pack)
from _bench import Stats, Timer

import torch  # noqa: E402

# layout preset -> (training preset of the random hypernet, base UNet to patch)
LAYOUTS = {"tiny-attn-r4": ("tiny", "tiny"), "sdxl-attn-r4": ("sdxl", "sdxl"), "sdxl-qv-r1": ("sdxl", "sdxl")}
TARGET_LAYOUT, TARGET_STEPS, TARGET_SECONDS = "sdxl-attn-r4", 25, 1.0


def face_setup(work: Path):
    """Generated stand-in face models, an analyzer on them and one 1024 x 768 reference photo."""
    import face_models
    folder = work / "insightface" / "models" / "antelopev2-standin"
    face_models.write_face_models(folder)
    analyzer = _bench.pack_module("hypernet.encoders.face").load_face_analyzer(folder)
    photo = face_models.synthetic_photo(768, 1024, [(380, 180, 300, 7)], seed=1)
    image = torch.from_numpy(photo).float()[None] / 255.0  # ComfyUI IMAGE [B, H, W, C]
    return analyzer, image


def save_random_hypernet(work: Path, layout_name: str, embedding_model: str) -> str:
    folder = work / "lora_hypernets"
    folder.mkdir(exist_ok=True)
    layout = _bench.pack_module("hypernet.lora.presets").preset(layout_name)
    model = _bench.random_hypernet(layout, LAYOUTS[layout_name][0], embedding_model,
                                   library=_bench.pack_module("hypernet").__name__)
    name = f"random-{layout_name}.safetensors"
    _bench.pack_module("hypernet.model.checkpoint").save_hypernet(model, folder / name)
    _bench.register_folder("lora_hypernets", folder)
    return name


def personalize_once(hypernet, face_value, base, run: int, steps_list: list[int], sample_steps: int,
                     guidance: float) -> dict[str, float]:
    """Sample LoRA at every step count, then Decode LoRA and Apply LoRA on the `sample_steps`
    latent: seconds per stage, and the sum that makes the patched MODEL."""
    hypernet_nodes = _bench.pack_module("nodes.hypernet_nodes")
    seconds, latent = {}, None
    for steps in steps_list:
        with Timer() as t:
            (value,) = hypernet_nodes.SampleLoRA.execute(hypernet, face_value, run, steps, guidance, 0.0)
        seconds[f"sample {steps}"] = t.seconds
        if steps == sample_steps:
            latent = value
    with Timer() as decode:
        (lora,) = hypernet_nodes.DecodeLoRA.execute(hypernet, latent)
    with Timer() as apply:
        patched, _ = _bench.pack_module("nodes.lora_nodes").ApplyLoRA.execute(base, lora, 1.0)
    seconds.update({"decode": decode.seconds, "apply": apply.seconds})
    seconds["to MODEL"] = seconds[f"sample {sample_steps}"] + decode.seconds + apply.seconds
    return seconds


def measure_layout(work: Path, layout_name: str, face_value, steps_list: list[int], runs: int,
                   guidance: float) -> dict[str, Stats]:
    name = save_random_hypernet(work, layout_name, face_value.model_name)
    with Timer() as load:
        hypernet, _ = _bench.pack_module("nodes.hypernet_nodes").LoadHypernet.execute(name)
    base = _bench.base_model(LAYOUTS[layout_name][1])
    sample_steps = TARGET_STEPS if TARGET_STEPS in steps_list else steps_list[0]
    times: dict[str, list[float]] = {}
    for run in range(runs + 1):
        seconds = personalize_once(hypernet, face_value, base, run, steps_list, sample_steps, guidance)
        gc.collect()  # the patched MODEL and LORA of this run are gone, as in ComfyUI's next run
        if run > 0:  # run 0 warms up caches and allocators
            for stage, value in seconds.items():
                times.setdefault(stage, []).append(value)
    stats = {stage: Stats(tuple(values)) for stage, values in times.items()}
    stats["load"] = Stats((load.seconds,))
    stats["patched weights"] = Stats((float(len(_bench.pack_module("hypernet.lora.presets").preset(layout_name))),))
    return stats


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50], help="DDIM steps of Sample LoRA")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per stage (after one warm-up run)")
    parser.add_argument("--guidance", type=float, default=3.0)
    return parser.parse_args()


def measure(args: argparse.Namespace) -> tuple[Stats, dict[str, dict[str, Stats]]]:
    """Face Embed's time, then every stage per layout on that face."""
    embed = _bench.pack_module("nodes.face_nodes").FaceEmbed
    with tempfile.TemporaryDirectory(prefix="bench_personalize_") as tmp:
        work = Path(tmp)
        analyzer, image = face_setup(work)
        face = _bench.repeat(lambda: embed.execute(analyzer, image, False), args.runs)
        face_value, _ = embed.execute(analyzer, image, False)
        results = {name: measure_layout(work, name, face_value, args.steps, args.runs, args.guidance)
                   for name in args.layouts}
    return face, results


def report(args: argparse.Namespace, command: str, face: Stats, results: dict[str, dict[str, Stats]]) -> None:
    _bench.heading("Personalization latency by stage (seconds, median (min-max) of "
                   f"{args.runs} runs after a warm-up; guidance {args.guidance})", command)
    sample_steps = TARGET_STEPS if TARGET_STEPS in args.steps else args.steps[0]

    def row(stage: str, cell) -> tuple:
        return (stage, *[cell(results[name]) for name in args.layouts])

    rows = [row("face detection + embedding, 1 photo 1024x768 (generated stand-in models, not antelopev2)",
                lambda r: face.fmt()),
            row("Load Hypernet (once; ComfyUI caches it)", lambda r: f"{r['load'].median:.3f}")]
    rows += [row(f"Sample LoRA, {steps} steps", lambda r, steps=steps: r[f"sample {steps}"].fmt()) for steps in args.steps]
    rows += [row("Decode LoRA", lambda r: r["decode"].fmt()),
             row("Apply LoRA (node: checks + clone + add_patches)", lambda r: r["apply"].fmt()),
             row(f"**photo -> patched MODEL, excluding face: sample {sample_steps} + decode + apply**",
                 lambda r: f"**{r['to MODEL'].fmt()}**"),
             row("photo -> patched MODEL, including face (sum of medians)",
                 lambda r: f"{r['to MODEL'].median + face.median:.3f}"),
             row("LoRA modules patched", lambda r: f"{int(r['patched weights'].median)}")]
    _bench.table(("stage", *args.layouts), rows)
    if TARGET_LAYOUT in results and sample_steps == TARGET_STEPS:
        median = results[TARGET_LAYOUT]["to MODEL"].median
        verdict = "met" if median <= TARGET_SECONDS else "missed"
        print(f"Target: photo -> patched MODEL at {TARGET_LAYOUT}, {TARGET_STEPS} steps, excluding face detection "
              f"<= {TARGET_SECONDS:.1f} s median: {median:.3f} s, **{verdict}**.\n", flush=True)


def main() -> None:
    args = parse_args()
    command = _bench.command_line()
    face, results = measure(args)
    report(args, command, face, results)


if __name__ == "__main__":
    main()
