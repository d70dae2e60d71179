"""Seconds per identity LoRA of collect's trainer on the typeface miniature's glyph model, one
identity per step (today's loop: one guider call per image) against K identities per step
(lora_training.group), and which learning rate fits a typeface in ~100-150 steps.

In-process through lora_training.IdentityTrainer (what collect's workers run), 16 px glyphs
(4x8x8 latents), layout tiny-attn-r4, --batch images per identity per step, one torch thread.
Identities are URW test fonts (tests/font_support.py), 62 glyphs each, captions = characters.
"eval" is the fixed part per identity (base, initial and final loss on 4 draws per glyph),
"step" the time of one training step per identity; "150 steps" is eval + 150 steps.

    .venv-0.33.0/bin/python benchmarks/bench_collect_glyphs.py [--base GLYPH_MODEL] [--steps 12]
        [--groups 1,8,16,32] [--rates 1e-3,3e-3,1e-2,3e-2] [--sweep-steps 100,150]

Without --base a glyph model with the tests' trainable random weights is used: right for the
speed (same UNet), not for the learning rate (give the miniature's trained glyph model there).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import _bench  # first: ComfyUI and tests/ onto sys.path

import torch  # noqa: E402
from PIL import Image  # noqa: E402

FONTS = ["NimbusSans-Regular.otf", "NimbusRoman-Regular.otf", "C059-Roman.otf", "P052-Roman.otf",
         "NimbusMonoPS-Regular.otf", "URWGothic-Book.otf", "URWBookman-Light.otf", "NimbusSansNarrow-Regular.otf"]
LAYOUT = "tiny-attn-r4"


def write_typefaces(src: Path, count: int) -> list[Path]:
    from font_support import urw_font
    from miniature.base_model import DEFAULT_CHARSET
    from miniature.glyphs import render_glyph_sizes
    folders = []
    for index in range(count):
        folder = src / f"face{index}"
        folder.mkdir(parents=True)
        glyphs = render_glyph_sizes(urw_font(FONTS[index % len(FONTS)]), DEFAULT_CHARSET, sizes=(16,))[16]
        for char, glyph in zip(DEFAULT_CHARSET, glyphs):
            Image.fromarray(glyph).save(folder / f"{ord(char):04x}.png")
        folders.append(folder)
    return folders


def member_of(trainer, folder: Path, seed: int):
    photos = sorted(folder.glob("*.png"))
    return trainer.member(photos, [chr(int(p.stem, 16)) for p in photos], seed), photos


def trainer_for(base: Path, steps: int, batch: int, lr: float):
    import lora_training
    from hypernet.lora.presets import preset
    settings = lora_training.TrainingSettings(steps=steps, learning_rate=lr, batch_size=batch, resolution=64, seed=0)
    return lora_training.IdentityTrainer(base, preset(LAYOUT), settings)


def seconds_per_identity(base: Path, folders: list[Path], k: int, steps: int, batch: int) -> tuple[float, float]:
    """(wall, CPU) seconds per identity of training k identities (encoding excluded). One
    thread: the CPU seconds are what an unloaded core would take, the wall ones what this
    machine's load allowed."""
    trainer = trainer_for(base, steps, batch, 1e-3)
    members = [member_of(trainer, folders[i % len(folders)], 100 + i) for i in range(k)]
    wall, cpu = time.perf_counter(), time.process_time()
    if k == 1:  # today's path: collect without --identities-per-step
        member, _ = members[0]
        from lora_training.trainer import train_lora
        s = trainer.settings
        train_lora(trainer.model, member.latents, member.conditioning, trainer.layout, steps=s.steps,
                   learning_rate=s.learning_rate, seed=member.seed, batch_size=s.batch_size, eval_draws=s.eval_draws)
    else:
        trainer.train_group([m for m, _ in members])
    return (time.perf_counter() - wall) / k, (time.process_time() - cpu) / k


def speed(args, base: Path, folders: list[Path]) -> None:
    _bench.heading(f"Seconds per identity: one vs K identities per step (16 px glyphs, {LAYOUT}, batch {args.batch}, "
                   "1 thread)", _bench.command_line())
    rows = []
    for k in args.groups:
        eval_wall, eval_cpu = seconds_per_identity(base, folders, k, 0, args.batch)
        total_wall, total_cpu = seconds_per_identity(base, folders, k, args.steps, args.batch)
        step_cpu, step_wall = (total_cpu - eval_cpu) / args.steps, (total_wall - eval_wall) / args.steps
        per_identity = eval_cpu + 150 * step_cpu
        rows.append((k, f"{eval_cpu:.2f} ({eval_wall:.2f})", f"{step_cpu * 1000:.1f} ({step_wall * 1000:.1f})",
                     f"{per_identity:.2f}", f"{700 * per_identity / 60:.1f}", _bench.load_average()))
        print(f"  K={k}: eval {eval_cpu:.3f} s, step {step_cpu * 1000:.1f} ms per identity (CPU)", file=sys.stderr)
    _bench.table(("identities per step", "eval s/identity CPU (wall)", "ms per step per identity CPU (wall)",
                  "150 steps + eval, CPU s/identity", "700 identities on one core (min)", "load average"), rows)


def sweep(args, base: Path, folders: list[Path]) -> None:
    _bench.heading(f"Learning rate: final/base loss of a rank-4 LoRA on one typeface's 62 glyphs "
                   f"(mean over {len(folders)} typefaces, batch {args.batch}, base {base.name})", _bench.command_line())
    rows = []
    for lr in args.rates:
        ratios = []
        for steps in args.sweep_steps:
            trainer = trainer_for(base, steps, args.batch, lr)
            results = trainer.train_group([member_of(trainer, f, 100 + i)[0] for i, f in enumerate(folders)])
            ratios.append(sum(r.loss / r.base_loss for r in results) / len(results))
        rows.append((f"{lr:g}", *(f"{r:.3f}" for r in ratios), _bench.load_average()))
        print(f"  lr {lr:g}: {ratios}", file=sys.stderr)
    _bench.table(("learning rate", *(f"final/base at {s} steps" for s in args.sweep_steps), "load average"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="glyph model file (default: the tests' trainable random one)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--groups", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 16, 32])
    parser.add_argument("--rates", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--sweep-steps", type=lambda s: [int(v) for v in s.split(",")], default=[100, 150])
    parser.add_argument("--sweep-faces", type=int, default=4)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import comfy_support
    os.environ.setdefault("COMFYUI_PATH", str(comfy_support.COMFYUI_PATH))
    comfy_support.import_comfy()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        base = args.base
        if base is None:
            from glyph_support import trainable_glyph_model
            from miniature.base_model import DEFAULT_CHARSET
            base = trainable_glyph_model(work / "glyph.safetensors", DEFAULT_CHARSET)
        folders = write_typefaces(work / "src", max(args.sweep_faces, 4))
        print(f"# {_bench.machine()}, torch threads 1\n")
        if not args.skip_speed:
            speed(args, base, folders)
        if not args.skip_sweep:
            sweep(args, base, folders[:args.sweep_faces])


if __name__ == "__main__":
    main()
