"""Does the hypernetwork learn, and is it fast and small enough? Prints two tables.

1. Synthetic collection (`synth`, layout synth-100k: 99,840 values; 2,000 training and 200
   held-out identities): the `default` training preset, the autoencoder trained once, then the
   prior trained for each conditioning (AdaNorm, ADALoRA) x prediction target (eps, x0, v),
   each evaluated on the held-out identities with `hypernet.pipeline.evaluate`.
2. SDXL scale (sdxl-attn-r4, 5,806,080 values, `sdxl` preset, random weights): parameter
   counts, peak memory of one training step with batch 8, and the time to sample 25 DDIM
   steps and decode one LoRA (median of several runs).

    .venv/bin/python benchmarks/bench_hypernet.py --work bench_work [--only synthetic|sdxl]

Checkpoints and timings are cached in --work, so a second run only evaluates.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hypernet.lora.alignment import align, reference_factors  # noqa: E402
from hypernet.model.checkpoint import load_hypernet, save_hypernet  # noqa: E402
from hypernet.data.dataset import open_dataset  # noqa: E402
from hypernet.data.builder import build_dataset  # noqa: E402
from hypernet.lora.presets import preset  # noqa: E402
from hypernet.data.synth import SynthSpec, write_synth  # noqa: E402
from hypernet.pipeline.training import Trainer, load_train_config  # noqa: E402
from hypernet.lora.vectorize import Normalizer  # noqa: E402

VARIANTS = [(c, p) for c in ("adanorm", "adalora") for p in ("x0", "v", "eps")]
# Not in the default table: ADALoRA with the zero-initialised gate on its low-rank term (ours).
EXTRA_VARIANTS = [("adalora+gate", p) for p in ("x0", "v", "eps")]


def synthetic_dataset(work: Path, train: int, heldout: int, layout: str) -> Path:
    data = work / "data"
    if not (data / "manifest.json").is_file():
        write_synth(work / "collection", preset(layout), train + heldout, SynthSpec(seed=0))
        build_dataset(work / "collection", data, heldout=heldout / (train + heldout))
    return data


def explained_variance(vectors: torch.Tensor, layout, components: int = 32) -> float:
    z = Normalizer.fit(vectors, layout).normalize(vectors)
    z = z - z.mean(0)
    _, s, _ = torch.pca_lowrank(z, q=min(components, *z.shape), center=False)
    return float(s.square().sum() / z.square().sum())


def representation_table(data: Path) -> None:
    dataset = open_dataset(data)
    vectors = dataset.load("train")[0][:1000]
    aligned = align(vectors, reference_factors(vectors, dataset.layout), dataset.layout)
    print("\nVariance in the first 32 principal components (1,000 training LoRAs, normalised):")
    print(f"  canonical SVD factors: {explained_variance(vectors, dataset.layout):.3f}")
    print(f"  reference-aligned:     {explained_variance(aligned, dataset.layout):.3f}")


def _variant_config(config: str, prior_steps: int | None, conditioning: str | None = None, prediction: str | None = None):
    cfg = load_train_config(config)
    if prior_steps:
        cfg = dataclasses.replace(cfg, prior_steps=prior_steps)
    if conditioning:
        gate = conditioning == "adalora+gate"
        prior = dataclasses.replace(cfg.prior, conditioning="adalora" if gate else conditioning, adalora_gate=gate)
        cfg = dataclasses.replace(cfg, prior=prior, diffusion=dataclasses.replace(cfg.diffusion, prediction=prediction))
    return cfg


def train_autoencoder_once(dataset, work: Path, cfg, timings: dict, name: str = "autoencoder",
                           progress: bool = True) -> Path:
    """The weight autoencoder every prior variant shares (cached in --work as `name`; the
    autoencoder phase does not depend on the condition or the prior)."""
    ae_file = work / f"{name}.safetensors"
    if not ae_file.is_file():
        trainer = Trainer(dataset, cfg, torch.device("cpu"), ae_file, progress=progress)
        started = time.perf_counter()
        state = trainer.fresh_state()
        trainer.train_autoencoder(state)
        trainer.fit_latent_normalizer(state.model)
        timings[name] = time.perf_counter() - started
        save_hypernet(state.model, ae_file)
        trainer.state_file.unlink(missing_ok=True)
    return ae_file


def train_prior_variant(dataset, work: Path, ae_file: Path, cfg, name: str, timings: dict,
                        progress: bool = True) -> Path:
    """The prior of one variant on the shared autoencoder's latents (cached in --work)."""
    out = work / f"{name}.safetensors"
    if out.is_file():
        return out
    trainer = Trainer(dataset, cfg, torch.device("cpu"), out, progress=progress)
    state = trainer.fresh_state()
    trained = load_file(str(ae_file))
    state.model.load_state_dict({k: v for k, v in trained.items() if k.startswith(("vae.", "norm."))}, strict=False)
    state.phase = "prior"
    started = time.perf_counter()
    trainer.train_prior(state)
    state.model.prior.load_state_dict(state.ema)
    timings[name] = time.perf_counter() - started
    save_hypernet(state.model, out)
    trainer.state_file.unlink(missing_ok=True)
    return out


class Timings(dict):
    """Training seconds per model, kept in the work folder beside the cached checkpoints, so a
    second run only evaluates and still shows how long training took."""

    def __init__(self, path: Path):
        super().__init__(json.loads(path.read_text()) if path.is_file() else {})
        self.path = path

    def save(self) -> None:
        self.path.write_text(json.dumps(self))


def print_header(header: tuple[str, ...]) -> None:
    """A markdown table's header; its rows follow one by one as they are measured (print_row)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)


def print_row(row: tuple[str, ...]) -> None:
    print("| " + " | ".join(row) + " |", flush=True)


def synthetic_table(work: Path, train: int, heldout: int, layout: str, config: str, prior_steps: int | None,
                    guidance: float, variants: list[tuple[str, str]] = VARIANTS) -> None:
    from hypernet.pipeline.evaluate import evaluate
    data = synthetic_dataset(work, train, heldout, layout)
    representation_table(data)
    dataset = open_dataset(data)
    timings = Timings(work / "timings.json")
    ae_file = train_autoencoder_once(dataset, work, _variant_config(config, prior_steps), timings)
    timings.save()
    print(f"\nSynthetic collection: {layout} ({dataset.layout.num_values:,} values), "
          f"{len(dataset.ids('train'))} training / {len(dataset.ids('heldout'))} held-out identities, CPU "
          f"({torch.get_num_threads()} threads). Autoencoder training: {timings['autoencoder'] / 60:.1f} min. "
          f"Sampling: 2 seeds, 25 DDIM steps, guidance {guidance}.")
    print_header(("prior", "prior train min", "recon rel err", "sampled top1", "sampled cos", "diversity",
                  "mean top1", "nearest-emb top1", "nearest-emb cos", "ceiling top1"))
    for conditioning, prediction in variants:
        name = f"{conditioning}-{prediction}"
        cfg = _variant_config(config, prior_steps, conditioning, prediction)
        ckpt = train_prior_variant(dataset, work, ae_file, cfg, name, timings)
        timings.save()
        result = evaluate(load_hypernet(ckpt), dataset, seeds=2, steps=25, guidance=guidance, eta=0.0, progress=False)
        sampled, baselines = result["sampled"], result["baselines"]
        print_row((name, f"{timings[name] / 60:.1f}", f"{result['recon']['rel_err']:.3f}", f"{sampled['top1']:.3f}",
                   f"{sampled['cosine']:.3f}", f"{sampled['diversity']:.3f}", f"{baselines['mean']['top1']:.3f}",
                   f"{baselines['nearest_embedding']['top1']:.3f}", f"{baselines['nearest_embedding']['cosine']:.3f}",
                   f"{result['ceiling']['top1']:.3f}"))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sdxl_step_memory() -> None:
    """Runs in a child process so its peak memory is its own."""
    from hypernet.model.autoencoder import kl_divergence
    from hypernet.model.hypernet import Hypernet, HypernetConfig
    cfg = load_train_config("sdxl")
    layout = preset("sdxl-attn-r4")
    model = Hypernet(HypernetConfig(layout=layout, embedding_model="x", autoencoder=cfg.autoencoder,
                                    prior=cfg.prior, diffusion=cfg.diffusion))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = _peak_rss_gib()
    x = torch.randn(cfg.ae_batch, layout.num_values)
    started = time.perf_counter()
    for _ in range(2):  # the second step has Adam's state allocated
        mean, logvar = model.vae.encode(x)
        recon = model.vae.decode(mean + (0.5 * logvar).exp() * torch.randn_like(mean))
        loss = torch.nn.functional.mse_loss(recon, x) + 0.1 * kl_divergence(mean, logvar)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(json.dumps({"peak_gib": _peak_rss_gib(), "before_gib": before,
                      "step_s": (time.perf_counter() - started) / 2}))


def sdxl_table(runs: int) -> None:
    from hypernet.model.hypernet import Hypernet, HypernetConfig
    from hypernet.pipeline.sampling import decode_lora, sample_latents
    cfg = load_train_config("sdxl")
    layout = preset("sdxl-attn-r4")
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig(layout=layout, embedding_model="x", autoencoder=cfg.autoencoder,
                                    prior=cfg.prior, diffusion=cfg.diffusion)).eval()
    counts = model.parameter_counts()
    embedding = torch.nn.functional.normalize(torch.randn(512), dim=0)
    times = []
    for run in range(runs + 1):
        started = time.perf_counter()
        decode_lora(model, sample_latents(model, embedding, seed=run, steps=25, guidance=1.5))
        times.append(time.perf_counter() - started)
    child = subprocess.run([sys.executable, __file__, "--sdxl-step-memory"], capture_output=True, text=True, check=True)
    memory = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\nSDXL scale: sdxl-attn-r4 ({layout.num_values:,} values), `sdxl` preset, CPU ({torch.get_num_threads()} threads)")
    print("| measure | value |\n|---|---|")
    print(f"| autoencoder parameters ({cfg.autoencoder.kind}) | {counts['autoencoder']:,} |")
    print(f"| prior parameters | {counts['prior']:,} |")
    print(f"| latent size | {model.latent_size:,} |")
    print(f"| training step, batch {cfg.ae_batch}: peak process memory | {memory['peak_gib']:.2f} GiB |")
    print(f"| training step, batch {cfg.ae_batch}: time | {memory['step_s']:.2f} s |")
    print(f"| sample 25 steps + decode one LoRA, median of {runs} | {statistics.median(times[1:]):.3f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench_work")
    parser.add_argument("--only", choices=("synthetic", "sdxl"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layout", default="synth-100k", help="layout preset of the synthetic collection")
    parser.add_argument("--config", default="default", help="training preset or JSON file")
    parser.add_argument("--prior-steps", type=int, help="override the preset's prior steps for every variant")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale for the sampled LoRAs")
    parser.add_argument("--variants", default=",".join(f"{c}-{p}" for c, p in VARIANTS),
                        help="conditioning-prediction pairs to train and evaluate, in this order (default: all six; "
                             "adalora+gate-x0 and the like add the gated ADALoRA)")
    parser.add_argument("--sdxl-step-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdxl_step_memory:
        sdxl_step_memory()
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "sdxl"):
        sdxl_table(args.runs)
    if args.only in (None, "synthetic"):
        variants = [tuple(v.split("-", 1)) for v in args.variants.split(",")]
        known = VARIANTS + EXTRA_VARIANTS
        unknown = [v for v in variants if v not in known]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {[f'{c}-{p}' for c, p in known]}")
        synthetic_table(args.work, args.train, args.heldout, args.layout, args.config, args.prior_steps, args.guidance,
                        variants)


if __name__ == "__main__":
    main()
