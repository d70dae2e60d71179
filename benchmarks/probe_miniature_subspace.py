"""Where the typeface miniature's identity signal lives in LoRA space (issue 17), from a finished
`make miniature` run folder:

1. statistics: the leading principal directions of the aligned training LoRAs, the share of
   variance they hold, and the cosine between a held-out family's coordinates and those of its
   nearest training family (by typeface embedding) or of a random one;
2. images (`--families N`, `evaluate-images --lora-dir`, the run's prompts, seeds and sampler):
   each held-out family's own LoRA projected onto the leading 8 / 32 directions (own8, own32),
   own8 rescaled to a training LoRA's mean distance from the mean (own8x), the nearest family's
   projection (near8), and a hypernet's sampled LoRAs moved `--scales` times as far from the
   mean LoRA (`--hypernet`, default the run's trained one). Paired differences against the base
   model and the nearest family's LoRA, as in probe_miniature_controls.py.

    python benchmarks/probe_miniature_subspace.py [--run .cache/miniature/run] [--families 56]
        [--hypernet CKPT] [--scales 1.5 2.5] [--no-images]

About 3.5 minutes per LoRA set on one core of the 2-core CPU at 56 families.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_miniature_controls import REPO, load_collection, paired  # noqa: E402

from hypernet.lora.alignment import align, reference_factors  # noqa: E402
from hypernet.lora.lora_io import write_lora  # noqa: E402
from hypernet.lora.vectorize import unflatten  # noqa: E402
from hypernet.model.checkpoint import load_hypernet  # noqa: E402
from hypernet.pipeline.sampling import sample_latents  # noqa: E402
from miniature.run import python_env  # noqa: E402


def statistics(train, train_faces, held, held_faces, layout) -> tuple:
    reference = reference_factors(train, layout)
    train, held = align(train, reference, layout), align(held, reference, layout)
    mean = train.mean(0)
    centred = train - mean
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    share = singular.square().cumsum(0) / singular.square().sum()
    nearest = (held_faces @ train_faces.T).argmax(1)
    pick = torch.randint(len(train), (len(held),), generator=torch.Generator().manual_seed(0))
    cos = torch.nn.functional.cosine_similarity
    print("| leading directions | share of variance | cos(own, nearest family) | cos(own, random family) |")
    print("|---|---|---|---|")
    for k in (8, 16, 32, 64):
        p = directions[:k]
        own = (held - mean) @ p.T
        print(f"| {k} | {float(share[k - 1]):.3f} | {float(cos(own, centred[nearest] @ p.T).mean()):.3f} | "
              f"{float(cos(own, centred[pick] @ p.T).mean()):.3f} |")
    distance = centred.norm(dim=1).mean()
    sets = {}
    for k in (8, 32):
        own = ((held - mean) @ directions[:k].T) @ directions[:k]
        sets[f"own{k}"] = mean + own
        if k == 8:
            sets["own8x"] = mean + own * (distance / own.norm(dim=1, keepdim=True))
            sets["near8"] = mean + (centred[nearest] @ directions[:k].T) @ directions[:k]
    return sets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / ".cache/miniature/run")
    parser.add_argument("--families", type=int, default=56, help="the first N held-out families for the images")
    parser.add_argument("--hypernet", type=Path, help="default: the run's hypernet_trained.safetensors")
    parser.add_argument("--scales", type=float, nargs="*", default=[1.0, 1.5, 2.5])
    parser.add_argument("--no-images", action="store_true", help="the statistics only (seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = args.run
    _, train, train_faces, layout = load_collection(run / "collection" / "train")
    ids, held, held_faces, _ = load_collection(run / "collection" / "heldout", layout)
    sets = statistics(train, train_faces, held, held_faces, layout)
    if args.no_images:
        return 0
    n = args.families
    ids, held_faces = ids[:n], held_faces[:n]
    sets = {name: vectors[:n] for name, vectors in sets.items()}
    model = load_hypernet(args.hypernet or run / "hypernet_trained.safetensors")
    sampled = model.decode_samples(sample_latents(model, held_faces, seed=0))  # at the checkpoint's own scale
    mean = model.norm.mean
    for scale in args.scales:
        sets[f"hypernet_x{scale:g}"] = mean + scale * (sampled - mean)
    out = run / "probe_subspace"
    shutil.rmtree(out, ignore_errors=True)
    (out / "heldout").mkdir(parents=True)
    for identity in ids:
        (out / "heldout" / identity).symlink_to((run / "collection" / "heldout" / identity).resolve())
    for name, vectors in sets.items():
        (out / name).mkdir()
        for identity, vector in zip(ids, vectors):
            write_lora(out / name / f"{identity}.safetensors", unflatten(vector, layout), base_model="sdxl")
    evaluation = json.loads((run / "eval" / "evaluate.json").read_text())
    sampler = evaluation["sampler"]
    command = [sys.executable, "-m", "hypernet", "evaluate-images", "--base", str(run / "glyph_base.safetensors"),
               "--identities", str(out / "heldout"), "--aligned-crops", "--methods", "",
               "--embedding-model", str(run / "encoder" / "insightface" / "typeface"),
               "--prompts", *evaluation["prompts"], "--seeds", *map(str, evaluation["seeds"]),
               "--sample-steps", str(sampler["steps"]), "--cfg", str(sampler["cfg"]), "--sampler", sampler["sampler"],
               "--scheduler", sampler["scheduler"], "--threads", "1", "--json", str(out / "scores.json"), "--quiet"]
    for name in sets:
        command += ["--lora-dir", f"{name}={out / name}"]
    subprocess.run(command, check=True, cwd=REPO, env=python_env())
    scores = json.loads((out / "scores.json").read_text())["methods"]
    runs = {name: {i: m["per_identity"][i] for i in ids} for name, m in evaluation["methods"].items()}
    gap = sum(runs["trained"][i] - runs["base"][i] for i in ids) / len(ids)
    print(f"\n{len(ids)} held-out families; paired differences, mean +- std. error")
    print("| LoRAs | - base | - nearest | gap closed |\n|---|---|---|---|")
    for name in [*sets, "nearest", "trained"]:
        row = scores[name]["per_identity"] if name in scores else runs[name]
        closed = sum(row[i] - runs["base"][i] for i in ids) / len(ids) / gap
        print(f"| {name} | {paired(row, runs['base'])} | {paired(row, runs['nearest'])} | {100 * closed:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
