"""Training throughput: samples per second of the autoencoder and the prior phases.

The real `hypernet.pipeline.training.Trainer` runs its own steps (forward, loss, backward, gradient
clipping, AdamW, EMA for the prior) with the training preset's batch sizes, on random LoRA
vectors of the layout (speed does not depend on the values). The first step of each phase is
not counted (allocations, warm-up); the rest are timed between consecutive steps. The one-off
alignment reference of Trainer.__init__ (minutes at SDXL size, see throughput()) is replaced by
a stand-in: it is not part of a step.
On the CPU always; on the GPU too when torch sees one.

    .venv/bin/python benchmarks/bench_train.py [--layout sdxl-attn-r4] [--preset sdxl] [--ae-steps 3] [--prior-steps 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import _bench
from _bench import Stats

import torch  # noqa: E402

from hypernet.lora.presets import load_layout  # noqa: E402
import hypernet.pipeline.trainer as train_module  # noqa: E402
from hypernet.pipeline.training import Trainer, load_train_config  # noqa: E402


class RandomDataset:
    """What the Trainer reads of a dataset, filled with random vectors and face embeddings."""

    embedding_model = "random-embeddings"
    embedding_dim = 512

    def __init__(self, layout, identities: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.layout = layout
        self.path = Path(f"<{identities} random LoRAs of {layout.fingerprint}>")
        self._ids = [f"id-{i:05d}" for i in range(identities)]
        self._vectors = torch.randn(identities, layout.num_values, generator=gen) * 0.01
        self._embeddings = torch.randn(identities, self.embedding_dim, generator=gen)

    def ids(self, split: str) -> list[str]:
        return list(self._ids)

    def load(self, split: str):
        return self._vectors, self._embeddings, list(self._ids)


def _first_vector_as_reference(vectors: torch.Tensor, layout) -> torch.Tensor:
    return vectors[0].clone()


def throughput(dataset, cfg, device: torch.device, work: Path) -> dict[str, Stats]:
    stamps: dict[str, list[float]] = {}
    # Trainer.__init__ computes the alignment reference once per run (a full SVD of every
    # module's mean delta W: over 10 minutes for sdxl-attn-r4 on this CPU). It is no part of a
    # step, so a stand-in reference is used here; step cost does not depend on its values.
    train_module.reference_factors = _first_vector_as_reference
    trainer = Trainer(dataset, cfg, device, work / "throughput.safetensors", progress=False,
                      on_step=lambda phase, step: stamps.setdefault(phase, []).append(time.perf_counter()))
    trainer.run(resume=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {phase: Stats(tuple(b - a for a, b in zip(times, times[1:]))) for phase, times in stamps.items()}


def flops_per_step(dataset, cfg, device: torch.device, work: Path) -> dict[str, float]:
    """Floating-point operations of one step of each phase (forward, backward, optimiser), counted
    by PyTorch's FlopCounterMode as the difference between runs one step apart, so the GPU time
    of a long run can be estimated on paper: steps x FLOPs / the GPU's sustained FLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode
    train_module.reference_factors = _first_vector_as_reference

    def total(ae_steps: int, prior_steps: int) -> int:
        run_cfg = dataclasses.replace(cfg, ae_steps=ae_steps, prior_steps=prior_steps)
        counter = FlopCounterMode(display=False)
        with counter:
            Trainer(dataset, run_cfg, device, work / "flops.safetensors", progress=False).run(resume=False)
        return counter.get_total_flops()

    base = total(1, 1)
    return {"autoencoder": float(total(2, 1) - base), "prior": float(total(1, 2) - base)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sdxl-attn-r4")
    parser.add_argument("--preset", default="sdxl", help="training preset (batch sizes and architecture)")
    parser.add_argument("--ae-steps", type=int, default=3, help="timed autoencoder steps (one more runs first)")
    parser.add_argument("--prior-steps", type=int, default=5, help="timed prior steps (one more runs first)")
    parser.add_argument("--identities", type=int, default=32, help="random LoRAs to draw batches from")
    return parser.parse_args()


def report(args: argparse.Namespace, command: str, layout, cfg, results: dict[str, dict[str, Stats]]) -> None:
    _bench.heading(f"Training throughput at {args.layout} ({layout.num_values:,} values), preset `{args.preset}` "
                   "(samples/s, median (min-max) over steps)", command)
    print(f"Autoencoder: {cfg.autoencoder.kind}, batch {cfg.ae_batch}, {args.ae_steps} timed steps; prior: "
          f"{cfg.prior.conditioning}, width {cfg.prior.width}, batch {cfg.prior_batch}, {args.prior_steps} timed steps.\n")
    gpu = _bench.gpu_name()
    header = ("phase", f"CPU ({torch.get_num_threads()} torch threads): samples/s", "CPU: s/step",
              "GFLOP/step", f"GPU ({gpu})" if gpu else "GPU")
    rows = []
    for phase, batch in (("autoencoder", cfg.ae_batch), ("prior", cfg.prior_batch)):
        cpu = results["cpu"][phase]
        rate = Stats(tuple(batch / s for s in cpu.values))
        if "cuda" in results:
            g = results["cuda"][phase]
            gpu_cell = f"{Stats(tuple(batch / s for s in g.values)).fmt(digits=1)} samples/s"
        else:
            gpu_cell = "not measured: no GPU lent"
        rows.append((phase, rate.fmt(digits=1), cpu.fmt(), f"{results['flops'][phase] / 1e9:.1f}", gpu_cell))
    _bench.table(header, rows)


def main() -> None:
    args = parse_args()
    command = _bench.command_line()
    layout = load_layout(args.layout)
    # Checkpoints only at the end: saving is not what is measured here.
    cfg = dataclasses.replace(load_train_config(args.preset), ae_steps=args.ae_steps + 1,
                              prior_steps=args.prior_steps + 1, checkpoint_every=10**9)
    dataset = RandomDataset(layout, args.identities)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        results = {device.type: throughput(dataset, cfg, device, Path(tmp)) for device in devices}
        results["flops"] = flops_per_step(dataset, cfg, torch.device("cpu"), Path(tmp))
    report(args, command, layout, cfg, results)


if __name__ == "__main__":
    main()
