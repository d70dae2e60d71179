"""Writes tests/data/face_only_golden.safetensors: what a face-only hypernet gave before the
global-feature condition existed (run once with the code of main at 5180c60, before issue 7).

For two tiny face-only models (ADALoRA and AdaNorm blocks) it records the exact config JSON
main wrote into checkpoints, a digest of the state dict (names, shapes, bytes) and the latents
and decoded vectors sampled for fixed faces and seeds after a save/load round trip (the vectors
as sha256 digests, and since issue 14 as tensors too).
tests/test_condition_compat.py rebuilds the same models with the current code and demands
the same config JSON and digest exactly, and the same samples within float tolerance (they are
computed, and another CPU kind rounds differently).

    .venv/bin/python tests/data/make_face_only_golden.py               # write the file anew
    .venv/bin/python tests/data/make_face_only_golden.py --add-vectors  # add the vector tensors

`--add-vectors` (run once for issue 14, on the CPU kind that wrote the file) keeps everything
main 5180c60 recorded and adds the decoded vectors of the recorded latents as tensors, after
checking that their sha256 equals the digests main recorded: they are main's values exactly.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hypernet.model.checkpoint import load_hypernet, save_hypernet  # noqa: E402
from hypernet.model.hypernet import Hypernet, HypernetConfig  # noqa: E402
from hypernet.pipeline.sampling import sample_latents  # noqa: E402

GOLDEN = Path(__file__).with_name("face_only_golden.safetensors")
# (name, config dict overrides) of the models recorded; the layout is tests' SMALL_LAYOUT.
VARIANTS = {
    "adalora": dict(prior=dict(width=32, blocks=2, conditioning="adalora", adalora_rank=2, time_dim=16)),
    "adanorm": dict(prior=dict(width=32, blocks=2, conditioning="adanorm", adalora_rank=4, time_dim=16)),
}
SETTINGS = [(1.0, 0.0), (3.0, 0.0), (2.0, 0.5)]  # (guidance, eta)


def base_config_dict(variant: str) -> dict:
    from hypernet_support import SMALL_LAYOUT
    return {"layout": SMALL_LAYOUT.to_dict(), "embedding_model": "golden-face-model", "embedding_dim": 512,
            "condition": "face",
            "autoencoder": {"kind": "mlp", "latent_dim": 16, "hidden": 24, "blocks": 1, "chunk": 4096,
                            "token_dim": 8, "kl_weight": 0.1, "delta_weight": 0.0},
            "prior": {"cond_dropout": 0.1, **VARIANTS[variant]["prior"]},
            "diffusion": {"timesteps": 1000, "prediction": "x0", "schedule": "cosine"}}


def fill_weights(model: torch.nn.Module) -> None:
    """Deterministic weights that do not depend on module construction order: one seeded
    generator per tensor name (std buffers kept positive)."""
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            gen = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))
            values = torch.randn(tensor.shape, generator=gen) * 0.2
            tensor.copy_(values.abs() + 0.5 if name.endswith("std") else values)


def state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def faces() -> torch.Tensor:
    return torch.randn(3, 512, generator=torch.Generator().manual_seed(1234))


def build(variant: str, folder: Path) -> Hypernet:
    """The variant's model written with save_hypernet and read back with load_hypernet."""
    model = Hypernet(HypernetConfig.from_dict(base_config_dict(variant)))
    fill_weights(model)
    path = folder / f"{variant}.safetensors"
    save_hypernet(model, path)
    return load_hypernet(path)


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def samples(model: Hypernet) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Sampled latents (kept whole: a few KB) and digests of their decoded LoRA vectors."""
    latents, vectors = {}, {}
    for guidance, eta in SETTINGS:
        key = f"g{guidance}_e{eta}"
        latents[key] = sample_latents(model, faces(), seed=7, steps=8, guidance=guidance, eta=eta)
        vectors[key] = tensor_digest(model.decode_latents(latents[key]))
    return latents, vectors


def add_vectors() -> None:
    with safe_open(str(GOLDEN), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            model = build(variant, Path(tmp))
            assert state_digest(model) == metadata[f"{variant}.state_digest"], variant
            for guidance, eta in SETTINGS:
                key = f"{variant}.vectors_g{guidance}_e{eta}"
                vectors = model.decode_latents(tensors[f"{variant}.latents_g{guidance}_e{eta}"])
                assert tensor_digest(vectors) == metadata[key], f"{key}: not main's values on this CPU"
                tensors[key] = vectors.contiguous()
    save_file(tensors, str(GOLDEN), metadata)
    print(f"added the vector tensors to {GOLDEN} ({GOLDEN.stat().st_size} bytes)")


def main() -> None:
    tensors, metadata = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            model = build(variant, Path(tmp))
            metadata[f"{variant}.config_json"] = model.config.to_json()
            metadata[f"{variant}.state_digest"] = state_digest(model)
            latents, vectors = samples(model)
            tensors.update({f"{variant}.latents_{k}": v.contiguous() for k, v in latents.items()})
            metadata.update({f"{variant}.vectors_{k}": v for k, v in vectors.items()})
            tensors.update({f"{variant}.vectors_{k}": model.decode_latents(v).contiguous() for k, v in latents.items()})
    metadata["made_with"] = "main 5180c60 (before issue 7)"
    save_file(tensors, str(GOLDEN), metadata)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes): {json.dumps(sorted(tensors))}")


if __name__ == "__main__":
    add_vectors() if "--add-vectors" in sys.argv[1:] else main()
