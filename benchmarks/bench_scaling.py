"""Scaling: how sampling and decoding time grow with the layout size (100 k -> 5.8 M values) and
with the number of DDIM steps; prints two tables and draws both curves into one PNG.

Every size uses the same architecture, the `sdxl` training preset (chunked autoencoder, prior
width 512) with random weights, so the curve shows the size alone: synth-100k (99,840 values),
sdxl-qv-r1 (0.73 M), the SDXL attention layout at rank 1, 2 and 4 (1.45 M, 2.9 M, 5.8 M).
Times are hypernet calls (`sample_latents`, guidance 3, and `decode_lora`), without ComfyUI.

    .venv/bin/python benchmarks/bench_scaling.py [--runs 5] [--png benchmarks/scaling.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _bench
from _bench import Stats

import torch  # noqa: E402

from hypernet.lora.presets import preset  # noqa: E402
from hypernet.pipeline.sampling import decode_lora, sample_latents  # noqa: E402

SIZES = {  # label -> layout
    "synth-100k": lambda: preset("synth-100k"),
    "sdxl-qv-r1": lambda: preset("sdxl-qv-r1"),
    "sdxl-attn-r1": lambda: preset("sdxl-attn-r4").with_rank(1),
    "sdxl-attn-r2": lambda: preset("sdxl-attn-r4").with_rank(2),
    "sdxl-attn-r4": lambda: preset("sdxl-attn-r4"),
}
SMOKE_SIZES = {"tiny-attn-r4": lambda: preset("tiny-attn-r4"), "tiny-attn-r8": lambda: preset("tiny-attn-r4").with_rank(8)}


def timed(fn, runs: int) -> tuple[Stats, object]:
    result = fn()  # warm-up
    stats = _bench.repeat(fn, runs, warmup=0)
    return stats, result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    parser.add_argument("--preset", default="sdxl", help="training preset of every size")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--smoke", action="store_true", help="two tiny layouts instead of the SDXL sizes")
    parser.add_argument("--png", type=Path, default=Path(__file__).resolve().parent / "scaling.png")
    return parser.parse_args()


def by_layout_size(sizes: dict, face: torch.Tensor, args: argparse.Namespace) -> list[tuple]:
    """(label, values, latent size, sample 25 steps, decode) per layout size."""
    rows = []
    for label, make in sizes.items():
        layout = make()
        model = _bench.random_hypernet(layout, args.preset)
        sample, latent = timed(lambda: sample_latents(model, face, seed=0, steps=25, guidance=args.guidance), args.runs)
        decode, _ = timed(lambda: decode_lora(model, latent), args.runs)
        rows.append((label, layout.num_values, model.latent_size, sample, decode))
        print(f"  {label}: sample {sample.median:.3f} s, decode {decode.median:.3f} s", flush=True)
        model = None  # freed before the next size is built: SDXL-size hypernets are large
    return rows


def by_step_count(layout, face: torch.Tensor, args: argparse.Namespace) -> tuple[list[tuple[int, Stats]], Stats]:
    """Sampling time per step count at one layout, and its decode time."""
    model = _bench.random_hypernet(layout, args.preset)
    rows = []
    for steps in args.steps:
        sample, latent = timed(lambda: sample_latents(model, face, seed=0, steps=steps, guidance=args.guidance), args.runs)
        rows.append((steps, sample))
    decode, _ = timed(lambda: decode_lora(model, latent), args.runs)
    return rows, decode


def main() -> None:
    args = parse_args()
    command = _bench.command_line()
    face = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    sizes = SMOKE_SIZES if args.smoke else SIZES
    by_size = by_layout_size(sizes, face, args)
    largest_label, largest = list(sizes.items())[-1]
    by_steps, decode = by_step_count(largest(), face, args)

    _bench.heading(f"Scaling with layout size and steps (seconds, median (min-max) of {args.runs} runs; preset "
                   f"`{args.preset}`, random weights, guidance {args.guidance})", command)
    _bench.table(("layout", "values", "latent", "sample 25 steps", "decode", "sample + decode (medians)"),
                 [(label, f"{values:,}", f"{latent:,}", s.fmt(), d.fmt(), f"{s.median + d.median:.3f}")
                  for label, values, latent, s, d in by_size])
    _bench.table(("steps", f"sample at {largest_label}", "per step (median)", "sample + decode (medians)"),
                 [(steps, s.fmt(), f"{s.median / steps * 1000:.1f} ms", f"{s.median + decode.median:.3f}")
                  for steps, s in by_steps])
    draw(args.png, by_size, by_steps, decode, largest_label)
    print(f"Plot: `{display_path(args.png)}`\n", flush=True)


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_bench.ROOT))
    except ValueError:
        return str(path)


def draw(png: Path, by_size, by_steps, decode: Stats, largest_label: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    def band(ax, x, stats_list, label, marker):
        med = [s.median for s in stats_list]
        err = [[m - s.low for m, s in zip(med, stats_list)], [s.high - m for m, s in zip(med, stats_list)]]
        ax.errorbar(x, med, yerr=err, label=label, marker=marker, capsize=3)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    values = [v for _, v, _, _, _ in by_size]
    band(left, values, [s for *_, s, _ in by_size], "sample, 25 steps", "o")
    band(left, values, [d for *_, d in by_size], "decode", "s")
    totals = [s.median + d.median for *_, s, d in by_size]
    left.plot(values, totals, "k--", label="sample + decode")
    for label, v, *_ in by_size:
        left.annotate(label, (v, 0), textcoords="offset points", xytext=(0, 4), fontsize=7, rotation=90,
                      xycoords=("data", "axes fraction"))
    left.set(xscale="log", xlabel="LoRA values in the layout", ylabel="seconds (median, bars: min-max)",
             title="Latency vs layout size")
    left.legend()
    steps = [n for n, _ in by_steps]
    band(right, steps, [s for _, s in by_steps], f"sample ({largest_label})", "o")
    right.plot(steps, [s.median + decode.median for _, s in by_steps], "k--", label="sample + decode")
    right.set(xlabel="DDIM steps", ylabel="seconds", title=f"Latency vs steps at {largest_label}")
    right.legend()
    fig.suptitle(f"Hypernet latency on {_bench.cpu_model()}, {torch.get_num_threads()} torch threads "
                 f"(commit {_bench.git_commit()})", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
