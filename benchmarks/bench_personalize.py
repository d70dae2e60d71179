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


def random_hypernet(layout_name: str, train_preset: str, embedding_model: str, seed: int = 0):
    """A Hypernet of the preset's architecture with random weights (the pack's own classes)."""
    layout = _bench.pack_module("hypernet.layout").preset(layout_name)
    cfg = _bench.pack_module("hypernet.train").load_train_config(train_preset)
    model_mod = _bench.pack_module("hypernet.model")
    torch.manual_seed(seed)
    model = model_mod.Hypernet(model_mod.HypernetConfig(
        layout=layout, embedding_model=embedding_model, autoencoder=cfg.autoencoder, prior=cfg.prior,
        diffusion=cfg.diffusion))
    # The prior's output layer starts at zero; small random values make the samples non-trivial.
    torch.nn.init.normal_(model.prior.latent_out.weight, std=0.02)
    return model.eval()


def face_setup(work: Path):
    """Generated stand-in face models, an analyzer on them and one 1024 x 768 reference photo."""
    import face_models
    folder = work / "insightface" / "models" / "antelopev2-standin"
    face_models.write_face_models(folder)
    analyzer = _bench.pack_module("hypernet.face").load_face_analyzer(folder)
    photo = face_models.synthetic_photo(768, 1024, [(380, 180, 300, 7)], seed=1)
    image = torch.from_numpy(photo).float()[None] / 255.0  # ComfyUI IMAGE [B, H, W, C]
    return analyzer, image


def save_random_hypernet(work: Path, layout_name: str, embedding_model: str) -> str:
    folder = work / "lora_hypernets"
    folder.mkdir(exist_ok=True)
    model = random_hypernet(layout_name, LAYOUTS[layout_name][0], embedding_model)
    name = f"random-{layout_name}.safetensors"
    _bench.pack_module("hypernet.checkpoint").save_hypernet(model, folder / name)
    _bench.register_folder("lora_hypernets", folder)
    return name


def measure_layout(work: Path, layout_name: str, face_value, steps_list: list[int], runs: int,
                   guidance: float) -> dict[str, Stats]:
    hypernet_nodes = _bench.pack_module("nodes.hypernet_nodes")
    lora_nodes = _bench.pack_module("nodes.lora_nodes")
    name = save_random_hypernet(work, layout_name, face_value.model_name)
    with Timer() as load:
        hypernet, _ = hypernet_nodes.LoadHypernet.execute(name)
    base = _bench.base_model(LAYOUTS[layout_name][1])
    sample_steps = TARGET_STEPS if TARGET_STEPS in steps_list else steps_list[0]
    times: dict[str, list[float]] = {}

    def record(stage: str, seconds: float, run: int) -> None:
        if run > 0:  # run 0 warms up caches and allocators
            times.setdefault(stage, []).append(seconds)

    for run in range(runs + 1):
        latent = None
        for steps in steps_list:
            with Timer() as t:
                (value,) = hypernet_nodes.SampleLoRA.execute(hypernet, face_value, run, steps, guidance, 0.0)
            record(f"sample {steps}", t.seconds, run)
            if steps == sample_steps:
                latent, sample_seconds = value, t.seconds
        with Timer() as decode:
            (lora,) = hypernet_nodes.DecodeLoRA.execute(hypernet, latent)
        with Timer() as apply:
            patched, _ = lora_nodes.ApplyLoRA.execute(base, lora, 1.0)
        record("decode", decode.seconds, run)
        record("apply", apply.seconds, run)
        record("to MODEL", sample_seconds + decode.seconds + apply.seconds, run)
        del patched, lora
        gc.collect()
    stats = {stage: Stats(tuple(values)) for stage, values in times.items()}
    stats["load"] = Stats((load.seconds,))
    stats["patched weights"] = Stats((float(len(_bench.pack_module("hypernet.layout").preset(layout_name))),))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50], help="DDIM steps of Sample LoRA")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per stage (after one warm-up run)")
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    command = _bench.command_line()
    face_nodes = _bench.pack_module("nodes.face_nodes")

    with tempfile.TemporaryDirectory(prefix="bench_personalize_") as tmp:
        work = Path(tmp)
        analyzer, image = face_setup(work)
        embed = face_nodes.FaceEmbed
        face = _bench.repeat(lambda: embed.execute(analyzer, image, False), args.runs)
        face_value, _ = embed.execute(analyzer, image, False)
        results = {name: measure_layout(work, name, face_value, args.steps, args.runs, args.guidance)
                   for name in args.layouts}

    _bench.heading("Personalization latency by stage (seconds, median (min-max) of "
                   f"{args.runs} runs after a warm-up; guidance {args.guidance})", command)
    sample_steps = TARGET_STEPS if TARGET_STEPS in args.steps else args.steps[0]
    rows = [("face detection + embedding, 1 photo 1024x768 (generated stand-in models, not antelopev2)",
             *[face.fmt() for _ in args.layouts])]
    rows.append(("Load Hypernet (once; ComfyUI caches it)", *[f"{results[n]['load'].median:.3f}" for n in args.layouts]))
    for steps in args.steps:
        rows.append((f"Sample LoRA, {steps} steps", *[results[n][f"sample {steps}"].fmt() for n in args.layouts]))
    rows.append(("Decode LoRA", *[results[n]["decode"].fmt() for n in args.layouts]))
    rows.append(("Apply LoRA (node: checks + clone + add_patches)", *[results[n]["apply"].fmt() for n in args.layouts]))
    rows.append((f"**photo -> patched MODEL, excluding face: sample {sample_steps} + decode + apply**",
                 *[f"**{results[n]['to MODEL'].fmt()}**" for n in args.layouts]))
    rows.append((f"photo -> patched MODEL, including face (sum of medians)",
                 *[f"{results[n]['to MODEL'].median + face.median:.3f}" for n in args.layouts]))
    rows.append(("LoRA modules patched", *[f"{int(results[n]['patched weights'].median)}" for n in args.layouts]))
    _bench.table(("stage", *args.layouts), rows)
    if TARGET_LAYOUT in results and sample_steps == TARGET_STEPS:
        median = results[TARGET_LAYOUT]["to MODEL"].median
        verdict = "met" if median <= TARGET_SECONDS else "missed"
        print(f"Target: photo -> patched MODEL at {TARGET_LAYOUT}, {TARGET_STEPS} steps, excluding face detection "
              f"<= {TARGET_SECONDS:.1f} s median: {median:.3f} s, **{verdict}**.\n", flush=True)


if __name__ == "__main__":
    main()
