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

import torch
from safetensors import safe_open

from ..model.checkpoint import load_hypernet
from ..model.condition import needs_face, needs_global
from ..common.tensors import mean_embedding
from ..errors import HypernetError
from ..encoders.encoder_info import SYNTHETIC_FINGERPRINT, EncoderInfo, check_encoder
from ..common.files import save_safetensors_atomic, save_safetensors_new, sha256_file
from ..lora.lora_io import lora_metadata, lora_to_state_dict
from ..pipeline.sampling import decode_lora, provenance, sample_latents


def _read_vectors(path: Path) -> tuple[torch.Tensor, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            if "embedding" not in f.keys():
                raise HypernetError(f"{path} has no tensor named 'embedding'")
            return f.get_tensor("embedding"), f.metadata() or {}
    except HypernetError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise HypernetError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_embedding_file(path: Path, expected_model: str):
    """An `embedding.safetensors` as the dataset builder reads it: [512] or [k, 512], averaged."""
    embedding, metadata = _read_vectors(path)
    model = metadata.get("embedding_model")
    if model is not None and model != expected_model:
        raise HypernetError(f"{path} holds a '{model}' embedding but the hypernet needs '{expected_model}'")
    return mean_embedding(embedding)


def read_global_file(path: Path, expected_encoder: dict):
    """A `global.safetensors` as the dataset builder reads it ([G] or [k, G], averaged), checked
    against the encoder the hypernet was trained with."""
    features, metadata = _read_vectors(path)
    info = EncoderInfo(metadata.get("embedding_model") or "unspecified", int(features.shape[-1]),
                       metadata.get("encoder_fingerprint") or SYNTHETIC_FINGERPRINT)
    try:
        check_encoder(expected_encoder, info)
    except HypernetError as exc:
        raise HypernetError(f"{path}: {exc}") from exc
    return mean_embedding(features)


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
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, type=Path, help="LoRA file to write (kohya .safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".safetensors":
        raise HypernetError(f"--out {args.out} must end in .safetensors")
    if args.out.exists() and not args.overwrite:
        raise HypernetError(f"{args.out} exists; pass --overwrite to replace it (nothing was changed)")
    model = load_hypernet(args.ckpt, device=args.device)
    embedding = face_input(args, model)
    global_features = global_input(args, model)
    started = time.perf_counter()
    latent = sample_latents(model, embedding, seed=args.seed, steps=args.steps, guidance=args.guidance, eta=args.eta,
                            global_features=global_features)
    weights = decode_lora(model, latent)
    seconds = time.perf_counter() - started
    metadata = provenance(args.ckpt.name, sha256_file(args.ckpt), args.seed, args.steps, args.guidance, args.eta,
                          model.embedding_model)
    if global_features is not None:
        metadata.update(condition=model.condition, global_encoder=model.config.global_encoder["name"])
    state, metadata = lora_to_state_dict(weights), lora_metadata(weights, model.layout.base_model, metadata)
    if args.overwrite:
        save_safetensors_atomic(state, args.out, metadata)
    elif not save_safetensors_new(state, args.out, metadata):
        raise HypernetError(f"{args.out} appeared while sampling; nothing was written")
    print(f"wrote {args.out}: {len(weights)} modules, sampled and decoded in {seconds:.2f} s")
    return 0


def face_input(args: argparse.Namespace, model):
    """The face embedding the checkpoint needs, or None when its condition has no face."""
    if not needs_face(model.condition):
        if args.embedding is not None:
            raise HypernetError(f"this hypernet is conditioned on '{model.condition}' only and takes no face embedding; "
                                "drop --embedding")
        return None
    if args.embedding is not None:
        return read_embedding_file(args.embedding, model.embedding_model)
    if args.face is None:
        raise HypernetError(f"this hypernet is conditioned on '{model.condition}' and needs a face: give --embedding "
                            "FILE or --face PHOTO... with --face-model")
    if args.face_model is None:
        raise HypernetError("--face needs --face-model, the insightface model folder the hypernet was trained with")
    from ..encoders.face import ArcFaceEmbedder
    embedder = ArcFaceEmbedder(args.face_model)
    if embedder.name != model.embedding_model:
        raise HypernetError(f"the hypernet was trained on '{model.embedding_model}' embeddings but --face-model "
                            f"gives '{embedder.name}'")
    return mean_embedding(torch.as_tensor([embedder.embed_file(p) for p in args.face]))


def global_input(args: argparse.Namespace, model):
    """The global image features the checkpoint needs, or None when its condition has none."""
    given = any(x is not None for x in (args.global_features, args.global_encoder, args.global_arch))
    if not needs_global(model.condition):
        if given:
            raise HypernetError("this hypernet is conditioned on the face only and takes no global image features; "
                                "drop --global-features / --global-encoder")
        return None
    expected = model.config.global_encoder
    if args.global_features is not None:
        if args.global_encoder is not None:
            raise HypernetError("give either --global-features or --global-encoder, not both")
        return read_global_file(args.global_features, expected)
    if args.global_encoder is None or args.global_arch is None or args.face is None:
        raise HypernetError(f"this hypernet is conditioned on '{model.condition}' and needs global image features of "
                            f"{EncoderInfo.from_dict(expected).describe()}: give --global-features FILE, or --face "
                            "PHOTO... with --global-encoder FILE --global-arch NAME")
    from ..encoders.global_features import GlobalImageEncoder
    encoder = GlobalImageEncoder.load(args.global_encoder, args.global_arch, device=args.global_device)
    check_encoder(expected, encoder.info)
    return mean_embedding(torch.stack([encoder.encode_file(p).float().cpu() for p in args.face]))
