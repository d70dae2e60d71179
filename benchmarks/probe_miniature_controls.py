"""Controls for the typeface miniature's nearest-family baseline (issue 17): does the nearest
training family's LoRA win because the typeface embedding finds a similar family, or because any
whole trained LoRA draws differently from the mean? And does averaging neighbours lose it?

From a finished `make miniature` run folder it writes three LoRA folders for the held-out
families and scores them with `python -m hypernet evaluate-images --lora-dir` (same prompts,
seeds and steps as the run's evaluation), then prints paired differences against the run's own
methods (same families, same seeds: the pairing removes most of the family-to-family spread):

    random   a training family's LoRA drawn at random (seeded), not the nearest
    k16      the softmax(cosine / 0.1) mean of the 16 most similar training families' LoRAs
    k16x     k16 moved away from the mean LoRA until its distance from it is the training
             LoRAs' mean distance (averaging shrinks a LoRA towards the mean)

    python benchmarks/probe_miniature_controls.py [--run .cache/miniature/run] [--families N]

About 20 minutes on one core of the 2-core CPU (111 held-out families, 3 methods).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypernet.lora.lora_io import layout_from_lora, read_lora, write_lora  # noqa: E402
from hypernet.lora.vectorize import flatten, unflatten  # noqa: E402
from hypernet.model.point_samplers import kernel_mean  # noqa: E402
from hypernet.pipeline.identity_scores import MethodScores  # noqa: E402
from miniature.run import python_env  # noqa: E402

NEIGHBOURS, TAU = 16, 0.1


def load_collection(folder: Path, layout=None):
    ids, vectors, faces = [], [], []
    for identity in sorted(p for p in folder.iterdir() if (p / "lora.safetensors").is_file()):
        weights = read_lora(identity / "lora.safetensors")
        layout = layout or layout_from_lora(weights, weights.metadata.get("hypernet.base_model", "sdxl"))
        vectors.append(flatten(weights, layout))
        faces.append(load_file(identity / "embedding.safetensors")["embedding"])
        ids.append(identity.name)
    faces = torch.stack(faces)
    return ids, torch.stack(vectors), faces / faces.norm(dim=1, keepdim=True), layout


def control_loras(run: Path) -> tuple[list[str], dict[str, torch.Tensor], object]:
    _, train, train_faces, layout = load_collection(run / "collection" / "train")
    ids, _, faces, _ = load_collection(run / "collection" / "heldout", layout)
    mean = train.mean(0)
    k16 = kernel_mean(faces, train_faces, train, NEIGHBOURS, TAU)  # issue 19's kernel sampler, on whole LoRAs
    scale = (train - mean).norm(dim=1).mean() / (k16 - mean).norm(dim=1).mean()
    pick = torch.randint(len(train), (len(ids),), generator=torch.Generator().manual_seed(0))
    return ids, {"random": train[pick], "k16": k16, "k16x": mean + (k16 - mean) * scale}, layout


def paired(a: dict, b: dict) -> str:
    difference = MethodScores("difference", {i: a[i] - b[i] for i in a})
    return f"{difference.mean:+.3f} +- {difference.sem:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / ".cache/miniature/run", help="a make miniature work folder")
    parser.add_argument("--families", type=int, help="only the first N held-out families (a quick look)")
    args = parser.parse_args(argv)
    run = args.run
    torch.set_num_threads(1)
    ids, loras, layout = control_loras(run)
    ids = ids[:args.families]
    out = run / "probe"
    families = out / "heldout"  # links to the held-out identity folders evaluated
    shutil.rmtree(families, ignore_errors=True)
    families.mkdir(parents=True)
    for identity in ids:
        (families / identity).symlink_to((run / "collection" / "heldout" / identity).resolve())
    for name, vectors in loras.items():
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
        for identity, vector in zip(ids, vectors):
            write_lora(out / name / f"{identity}.safetensors", unflatten(vector, layout), base_model="sdxl")
    evaluation = json.loads((run / "eval" / "evaluate.json").read_text())
    command = [sys.executable, "-m", "hypernet", "evaluate-images", "--base", str(run / "glyph_base.safetensors"),
               "--identities", str(families), "--aligned-crops",
               "--embedding-model", str(run / "encoder" / "insightface" / "typeface"), "--methods", "",
               "--prompts", *evaluation["prompts"], "--seeds", *map(str, evaluation["seeds"]),
               "--sample-steps", str(evaluation["sampler"]["steps"]), "--cfg", str(evaluation["sampler"]["cfg"]),
               "--sampler", evaluation["sampler"]["sampler"], "--scheduler", evaluation["sampler"]["scheduler"],
               "--threads", "1",
               "--json", str(out / "controls.json"), "--quiet"]
    for name in loras:
        command += ["--lora-dir", f"{name}={out / name}"]
    print("$", " ".join(command))
    subprocess.run(command, check=True, cwd=REPO, env=python_env())  # one torch thread
    controls = json.loads((out / "controls.json").read_text())["methods"]
    methods = {name: {i: m["per_identity"][i] for i in ids} for name, m in evaluation["methods"].items()}
    methods.update({name: m["per_identity"] for name, m in controls.items() if name in loras})
    print(f"\n{len(ids)} held-out families; identity similarity, mean (std. error)")
    for name, scores in methods.items():
        row = MethodScores(name, scores)
        print(f"  {name:20s} {row.mean:+.3f} ({row.sem:.3f})")
    print("\npaired differences (same families and seeds), mean +- std. error")
    for a, b in (("nearest", "random"), ("random", "base"), ("k16", "mean"), ("k16x", "nearest"),
                 ("trained", "nearest")):
        print(f"  {a} - {b}: {paired(methods[a], methods[b])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
