"""`python -m hypernet sample`: one LoRA for one face, through the functions the nodes call."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint import file_sha256, load_hypernet
from .dataset import mean_embedding
from .errors import HypernetError
from .files import save_safetensors_atomic, save_safetensors_new
from .lora_io import lora_metadata, lora_to_state_dict
from .sampling import decode_lora, sample_latents


def provenance(hypernet_file: str, hypernet_sha256: str, seed: int, steps: int, guidance: float, eta: float,
               embedding_model: str) -> dict[str, str]:
    """The metadata a sampled LoRA carries, so anyone can tell how to make it again."""
    return {"hypernet_file": hypernet_file, "hypernet_sha256": hypernet_sha256, "seed": str(seed),
            "steps": str(steps), "guidance": str(guidance), "eta": str(eta), "embedding_model": embedding_model}


def read_embedding_file(path: Path, expected_model: str):
    """An `embedding.safetensors` as the dataset builder reads it: [512] or [k, 512], averaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if "embedding" not in f.keys():
                raise HypernetError(f"{path} has no tensor named 'embedding'")
            embedding = f.get_tensor("embedding")
            model = (f.metadata() or {}).get("embedding_model")
    except HypernetError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise HypernetError(f"{path} is not a readable safetensors file ({exc})") from exc
    if model is not None and model != expected_model:
        raise HypernetError(f"{path} holds a '{model}' embedding but the hypernet needs '{expected_model}'")
    return mean_embedding(embedding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="hypernet checkpoint (.safetensors)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedding", type=Path, help="embedding.safetensors with a tensor 'embedding' [512] or [k, 512]")
    source.add_argument("--face", type=Path, nargs="+", help="reference photo(s) of one person")
    parser.add_argument("--face-model", type=Path, help="insightface model folder (e.g. models/insightface/models/antelopev2)")
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
    if args.embedding is not None:
        embedding = read_embedding_file(args.embedding, model.embedding_model)
    else:
        if args.face_model is None:
            raise HypernetError("--face needs --face-model, the insightface model folder the hypernet was trained with")
        from .face import ArcFaceEmbedder
        embedder = ArcFaceEmbedder(args.face_model)
        if embedder.name != model.embedding_model:
            raise HypernetError(f"the hypernet was trained on '{model.embedding_model}' embeddings but --face-model "
                                f"gives '{embedder.name}'")
        embedding = mean_embedding(torch.as_tensor([embedder.embed_file(p) for p in args.face]))
    started = time.perf_counter()
    latent = sample_latents(model, embedding, seed=args.seed, steps=args.steps, guidance=args.guidance, eta=args.eta)
    weights = decode_lora(model, latent)
    seconds = time.perf_counter() - started
    metadata = provenance(args.ckpt.name, file_sha256(args.ckpt), args.seed, args.steps, args.guidance, args.eta,
                          model.embedding_model)
    state, metadata = lora_to_state_dict(weights), lora_metadata(weights, model.layout.base_model, metadata)
    if args.overwrite:
        save_safetensors_atomic(state, args.out, metadata)
    elif not save_safetensors_new(state, args.out, metadata):
        raise HypernetError(f"{args.out} appeared while sampling; nothing was written")
    print(f"wrote {args.out}: {len(weights)} modules, sampled and decoded in {seconds:.2f} s")
    return 0
