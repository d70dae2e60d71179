"""`python -m hypernet evaluate-images`: identity similarity on images, per method (base model,
nearest and mean training LoRA, hypernet, hypernet + Refine, per-identity trained LoRA, LoRA
folders), same prompts and seeds for all, with a calibration row, a table, --json and --grid.

Drawing and training need ComfyUI: the `image_eval` package (beside `hypernet` in the pack) is
imported by name when the command runs, after ComfyUI is set up (COMFYUI_PATH)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..collect.jobs import DEFAULT_TEMPLATE, DEFAULT_TOKEN
from ..common.comfy_side import import_comfy_side
from ..common.files import write_text_atomic
from ..errors import HypernetError
from ..pipeline.identity_scores import format_table, report
from ..pipeline.sampling import DEFAULT_STEPS, GUIDANCE_HELP

RENDERER_PACKAGE = "image_eval"
METHODS = ("base", "nearest", "mean", "hypernet", "refine", "trained")
MAX_DEFAULT_PROMPTS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path, metavar="MODEL",
                        help="base model: the miniature's glyph model file, or a single-file checkpoint (SDXL)")
    parser.add_argument("--identities", required=True, type=Path, metavar="DIR",
                        help="held-out identities: one folder each with reference images (optional <image>.txt "
                             "captions; a glyph image's caption is its character) and optionally its trained LoRA")
    parser.add_argument("--embedding-model", required=True, type=Path, metavar="DIR",
                        help="insightface model folder that embeds references and drawn images (antelopev2 for "
                             "faces; the miniature's typeface encoder for glyphs)")
    parser.add_argument("--aligned-crops", action="store_true",
                        help="no detection: every image is already the aligned crop (glyphs, pre-cropped faces)")
    parser.add_argument("--methods", metavar="LIST",
                        help=f"comma-separated, of {', '.join(METHODS)} (default: every one the inputs allow)")
    parser.add_argument("--lora-dir", action="append", default=[], metavar="NAME=DIR",
                        help="one more method: LoRAs made elsewhere, DIR/<identity>.safetensors or one .safetensors "
                             "in DIR/<identity>/; repeatable")
    parser.add_argument("--train-collection", type=Path, metavar="DIR",
                        help="training identities with one LoRA each (a collect output): nearest and mean methods")
    hyper = parser.add_argument_group("hypernet")
    hyper.add_argument("--hypernet", type=Path, metavar="CKPT", help="hypernet checkpoint: hypernet and refine methods")
    hyper.add_argument("--hypernet-seed", type=int, default=0, help="LoRA sampling seed (default: %(default)s)")
    hyper.add_argument("--hypernet-steps", type=int, default=DEFAULT_STEPS, help="default: %(default)s")
    hyper.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    train = parser.add_argument_group("training (refine and trained methods)")
    train.add_argument("--refine-steps", type=int, default=20, help="Refine steps after sampling (default: %(default)s)")
    train.add_argument("--train-steps", type=int, default=200,
                       help="steps of a per-identity LoRA trained here, when its folder has none (default: %(default)s)")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="default: %(default)s")
    train.add_argument("--layout", metavar="PRESET", help="layout of LoRAs trained here (default: the hypernet's)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    train.add_argument("--caption-template", default=DEFAULT_TEMPLATE,
                       help="caption of references without a .txt caption (default: %(default)r)")
    train.add_argument("--token", default=DEFAULT_TOKEN, help="default: %(default)s")
    draw = parser.add_argument_group("drawing (the same for every method)")
    draw.add_argument("--prompts", nargs="+", metavar="PROMPT",
                      help="default: glyph models draw the references' characters (up to 8), checkpoints the "
                           "caption template")
    draw.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="default: %(default)s")
    draw.add_argument("--sample-steps", type=int, default=20, help="KSampler steps (default: %(default)s)")
    draw.add_argument("--cfg", type=float, default=3.0, help="default: %(default)s")
    draw.add_argument("--sampler", default="euler", help="default: %(default)s")
    draw.add_argument("--scheduler", default="normal", help="default: %(default)s")
    draw.add_argument("--resolution", type=int, default=1024, help="checkpoints' image side (default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the numbers as JSON")
    out.add_argument("--grid", type=Path, metavar="PNG", help="write references beside what each method drew")
    out.add_argument("--grid-identities", type=int, metavar="N",
                     help="only the first N identities in the --grid picture (default: all)")
    out.add_argument("--threads", type=int, help="torch threads")
    out.add_argument("--quiet", action="store_true", help="no per-identity lines")


def load_renderer_package():
    """The ComfyUI-side package, by name (hypernet never imports ComfyUI)."""
    return import_comfy_side(RENDERER_PACKAGE, "the package", "evaluate-images")


def chosen_methods(args) -> list[str]:
    if args.methods:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise HypernetError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    else:
        names = ["base"] + (["nearest", "mean"] if args.train_collection else []) + \
            (["hypernet", "refine"] if args.hypernet else []) + ["trained"]
    for name, needs, flag in (("nearest", args.train_collection, "--train-collection"),
                              ("mean", args.train_collection, "--train-collection"),
                              ("hypernet", args.hypernet, "--hypernet"), ("refine", args.hypernet, "--hypernet")):
        if name in names and not needs:
            raise HypernetError(f"method {name} needs {flag}")
    return names


def lora_dirs(specs: list[str]) -> list[tuple[str, Path]]:
    found = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise HypernetError(f"--lora-dir {spec!r}: write NAME=DIR")
        found.append((name, Path(folder)))
    return found


def build_methods(args, names, renderer, embedder):
    from ..pipeline import image_methods as im
    hypernet = None
    if args.hypernet:
        from ..model.checkpoint import load_hypernet
        model = load_hypernet(args.hypernet)
        if model.embedding_model != embedder.name:
            raise HypernetError(f"the hypernet {args.hypernet.name} was trained on '{model.embedding_model}' "
                                f"embeddings but --embedding-model gives '{embedder.name}'; give the model it was "
                                "trained with")
        if model.config.condition != "face":
            raise HypernetError(f"the hypernet {args.hypernet.name} is conditioned on '{model.config.condition}'; "
                                "evaluate-images samples face-conditioned hypernets only")
        hypernet = im.HypernetSampled(model, seed=args.hypernet_seed, steps=args.hypernet_steps, guidance=args.guidance)
    training = None
    if "nearest" in names or "mean" in names:
        from ..pipeline.lora_baselines import read_training_identities
        training = read_training_identities(args.train_collection, embedder)
    layout = None
    if args.layout:
        from ..lora.presets import load_layout
        layout = load_layout(args.layout)
    elif hypernet is not None:
        layout = hypernet.model.layout
    makers = {
        "base": lambda: im.BaseModel(),
        "nearest": lambda: im.Nearest(training),
        "mean": lambda: im.Mean(training),
        "hypernet": lambda: hypernet,
        "refine": lambda: im.Refine(hypernet, renderer, steps=args.refine_steps, learning_rate=args.learning_rate,
                                    seed=args.seed),
        "trained": lambda: im.Trained(renderer, layout, steps=args.train_steps, learning_rate=args.learning_rate,
                                      seed=args.seed),
    }
    methods = [makers[n]() for n in names]
    methods += [im.LoraFolder(name, folder) for name, folder in lora_dirs(args.lora_dir)]
    return methods


def default_prompts(kind: str, identities) -> list[str]:
    if kind == "glyph":
        characters = []
        for identity in identities:
            characters += [c for c in identity.captions if c not in characters]
        return characters[:MAX_DEFAULT_PROMPTS]
    return [identities[0].captions[0]]


def run(args: argparse.Namespace) -> int:
    import torch
    from ..pipeline.evaluate_images import Embedder, evaluate_images, read_heldout, reference_thumbnails, stderr_log
    from ..pipeline.image_grid import write_grid
    if args.threads:
        torch.set_num_threads(args.threads)
    names = chosen_methods(args)
    lora_dirs(args.lora_dir)
    for path, suffix in ((args.json, ".json"), (args.grid, ".png")):
        if path is not None and path.suffix.lower() != suffix:
            raise HypernetError(f"{path} must end in {suffix}")
    identities = read_heldout(args.identities, args.caption_template, args.token)
    package = load_renderer_package()
    renderer = package.Renderer(args.base, package.DrawSettings(
        steps=args.sample_steps, cfg=args.cfg, sampler=args.sampler, scheduler=args.scheduler,
        resolution=args.resolution))
    embedder = Embedder(args.embedding_model, args.aligned_crops, renderer.embedding_views)
    for identity in identities:
        renderer.check_captions(identity.captions, f"a caption of {identity.id}")
    prompts = args.prompts or default_prompts(renderer.kind, identities)
    renderer.check_captions(prompts, "--prompts")
    methods = build_methods(args, names, renderer, embedder)
    scores, calibration, drawn, missing = evaluate_images(
        identities, methods, renderer, embedder, prompts, list(args.seeds), log=None if args.quiet else stderr_log)
    gap_methods = tuple(m.name for m in methods if m.uses_hypernet)
    numbers = report(scores, calibration, gap_methods)
    numbers.update(heldout_identities=len(identities), prompts=prompts, seeds=list(args.seeds),
                   base_model=args.base.name, embedding_model=embedder.name, aligned_crops=args.aligned_crops,
                   sampler={"steps": args.sample_steps, "cfg": args.cfg, "sampler": args.sampler,
                            "scheduler": args.scheduler},
                   hypernet=args.hypernet.name if args.hypernet else None, images_without_subject=missing)
    print(format_table(numbers))
    if missing:
        print("images in which the embedding model found no face (scored 0): "
              + "; ".join(f"{m}: {sum(v.values())}" for m, v in missing.items()))
    if args.json:
        write_text_atomic(args.json, json.dumps(numbers, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.grid:
        shown = identities[:args.grid_identities] if args.grid_identities else identities
        rows = [(i.id, reference_thumbnails(i, 4), drawn[i.id]) for i in shown]
        write_grid(args.grid, rows)
        print(f"wrote {args.grid}")
    return 0
