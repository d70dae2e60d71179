"""`python -m hypernet dataset`: build a training dataset from identity folders (hypernet.data.builder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.builder import build_dataset
from ..errors import HypernetError
from ..lora.presets import load_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path, help="folder of identity folders (see module docs)")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--layout", help="layout preset or JSON file (default: the first usable LoRA's layout)")
    parser.add_argument("--heldout", type=float, default=0.1, help="fraction of identities held out for evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    parser.add_argument("--face-model", type=Path, help="insightface model folder, needed when folders hold photos")
    parser.add_argument("--aligned-crops", action="store_true",
                        help="the photos are already aligned face crops: no detection, each whole image is resized "
                             "to the recogniser's input and embedded (also for a folder with only a recognition model)")
    parser.add_argument("--global-encoder", type=Path, metavar="FILE",
                        help="CLIP image encoder weights (.safetensors, open_clip or ComfyUI clip_vision layout): "
                             "compute global image features from each identity's photos (needs --global-arch)")
    parser.add_argument("--global-arch", metavar="NAME", help="open_clip architecture of --global-encoder, e.g. ViT-H-14")
    parser.add_argument("--global-device", default="cpu", help="torch device for the image encoder (default cpu)")


def run(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout) if args.layout else None

    def arcface():
        from ..encoders.face import ArcFaceEmbedder
        return ArcFaceEmbedder(args.face_model, aligned_crops=args.aligned_crops)

    if (args.global_encoder is None) != (args.global_arch is None):
        raise HypernetError("--global-encoder FILE and --global-arch NAME go together (the file alone does not say "
                            "which open_clip architecture it holds)")

    def clip_encoder():
        from ..encoders.global_features import GlobalImageEncoder
        return GlobalImageEncoder.load(args.global_encoder, args.global_arch, device=args.global_device)

    result = build_dataset(args.src, args.out, layout=layout, heldout=args.heldout, seed=args.seed,
                           face_embedder=arcface if args.face_model else None,
                           global_encoder=clip_encoder if args.global_encoder else None)
    print(result.summary())
    print(f"dataset written to {result.path}")
    return 0
