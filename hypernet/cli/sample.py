"""`python -m hypernet sample`: one LoRA for one face, through the functions the nodes call.

What the command needs depends on the checkpoint's condition: a face embedding (`--embedding`,
or `--face` photos with `--face-model`) for "face", global image features (`--global-features`,
or the `--face` photos encoded with `--global-encoder FILE --global-arch NAME`) for "global",
both for "face+global". An input the checkpoint does not use is refused.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import HypernetError
from ..model.checkpoint import load_hypernet
from ..pipeline.condition_inputs import InputWords, check_condition_inputs
from ..pipeline.outputs import check_output, write_sampled_lora
from ..pipeline.sampling import (DEFAULT_ETA, DEFAULT_STEPS, GUIDANCE_HELP, checkpoint_guidance, decode_lora,
                                 sample_latents)
from ..pipeline.sampling_inputs import embed_face_photos, encode_global_photos, read_embedding_file, read_global_file

WORDS = InputWords(give_face="give --embedding FILE, or --face PHOTO... with --face-model FOLDER",
                   give_global="give --global-features FILE, or --face PHOTO... with --global-encoder FILE "
                               "--global-arch NAME",
                   drop_face="drop --embedding / --face-model", drop_global="drop --global-features / --global-encoder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="hypernet checkpoint (.safetensors)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--embedding", type=Path, help="embedding.safetensors with a tensor 'embedding' [512] or [k, 512]")
    source.add_argument("--face", type=Path, nargs="+", help="reference photo(s) of one person")
    parser.add_argument("--face-model", type=Path, help="insightface model folder (e.g. models/insightface/models/antelopev2)")
    parser.add_argument("--global-features", type=Path,
                        help="global.safetensors with a tensor 'embedding' [G] or [k, G] (hypernets with global "
                             "image features)")
    parser.add_argument("--global-encoder", type=Path,
                        help="CLIP image encoder weights (.safetensors) to encode the --face photos with")
    parser.add_argument("--global-arch", help="open_clip architecture of --global-encoder, e.g. ViT-H-14")
    parser.add_argument("--global-device", default="cpu", help="device of the image encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    parser.add_argument("--eta", type=float, default=DEFAULT_ETA)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, type=Path, help="LoRA file to write (kohya .safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    if args.global_features is not None and args.global_encoder is not None:
        raise HypernetError("give either --global-features or --global-encoder, not both")
    model = load_hypernet(args.ckpt, device=args.device)
    face_photos = args.face is not None and args.face_model is not None
    check_condition_inputs(model.config, args.embedding is not None or face_photos,
                           args.global_features is not None or args.global_encoder is not None, WORDS)
    started = time.perf_counter()
    latent = sample_latents(model, face_input(args, model), global_features=global_input(args, model),
                            seed=args.seed, steps=args.steps, guidance=args.guidance, eta=args.eta)
    weights = decode_lora(model, latent)
    seconds = time.perf_counter() - started
    guidance = checkpoint_guidance(model, args.guidance)  # the provenance names the guidance used
    write_sampled_lora(weights, args.out, model, args.ckpt, seed=args.seed, steps=args.steps, guidance=guidance,
                       eta=args.eta, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(weights)} modules, sampled and decoded in {seconds:.2f} s")
    return 0


def face_input(args: argparse.Namespace, model):
    """The face embedding given by --embedding or by --face photos; None when neither gives one."""
    if args.embedding is not None:
        return read_embedding_file(args.embedding, model.embedding_model, model.config.embedding_dim)
    if args.face is not None and args.face_model is not None:
        return embed_face_photos(args.face, args.face_model, model.embedding_model)
    return None


def global_input(args: argparse.Namespace, model):
    """The global image features given by --global-features or by --face photos through --global-encoder."""
    expected = model.config.global_encoder
    if args.global_features is not None:
        return read_global_file(args.global_features, expected)
    if args.global_encoder is None:
        if args.global_arch is not None:
            raise HypernetError("--global-arch NAME goes with --global-encoder FILE; drop it or give the file")
        return None
    if args.global_arch is None or args.face is None:
        raise HypernetError("--global-encoder FILE encodes the --face PHOTO... photos and needs --global-arch NAME, "
                            "the open_clip architecture of the file")
    return encode_global_photos(args.face, args.global_encoder, args.global_arch, expected, args.global_device)
