"""A tiny CLIP ViT for global image features, the same weights for open_clip and for ComfyUI.

No real CLIP weights can be downloaded here. The tests register a tiny architecture with
open_clip (as open_clip knows ViT-H-14) and describe the same network to ComfyUI's
ClipVisionModel with a json config (as comfy/clip_vision_config_h.json describes ViT-H-14),
then write seeded random weights in either layout.

Why not the stock CLIPVisionLoader: comfy.clip_vision.load_clipvision_from_sd picks its json
config by the presence of layer 22, 30 or 47 (ViT-L, -H, -G), so it only loads networks of
those full sizes (300 M+ parameters); a tiny ViT returns None ("clip vision file is invalid").
The tests therefore build ComfyUI's ClipVisionModel from a tiny config and load the weights
with ComfyUI's own key conversion, which is what the stock loader does after choosing a config.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_ARCH = "ViT-Tiny-hypernet-test"
TINY_DIM = 32
TINY_IMAGE = 64
OPEN_CLIP_CONFIG = {
    "embed_dim": TINY_DIM,
    "vision_cfg": {"image_size": TINY_IMAGE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
COMFY_CONFIG = {  # the same network in ComfyUI's (transformers') terms
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 64, "image_size": TINY_IMAGE,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 256, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 16, "projection_dim": TINY_DIM, "torch_dtype": "float32",
}
_CONFIG_DIR = Path(tempfile.gettempdir()) / "lora_hypernet_test_clip_configs"


def register_tiny_arch() -> str:
    """Make TINY_ARCH known to open_clip in this process (idempotent); returns its name."""
    import open_clip

    if open_clip.get_model_config(TINY_ARCH) is None:
        _CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        path = _CONFIG_DIR / f"{TINY_ARCH}.json"
        _write_atomic(path, json.dumps(OPEN_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_ARCH


def comfy_config_file() -> str:
    _CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    path = _CONFIG_DIR / "tiny_clip_vision_config.json"
    _write_atomic(path, json.dumps(COMFY_CONFIG))
    return str(path)


def _write_atomic(path: Path, text: str) -> None:
    """Several processes (collect's workers, parallel test runs) write and read these files at
    once: a reader must never see one half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def tiny_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """open_clip visual-tower weights (no prefix), every tensor seeded noise. Values are
    float16-representable, because ComfyUI holds CLIP vision weights in float16: both sides
    then compute with exactly the same numbers."""
    from hypernet.encoders.global_features import build_vision_tower

    visual, _ = build_vision_tower(register_tiny_arch())
    weights = {}
    for name, tensor in sorted(visual.state_dict().items()):
        gen = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:15], 16))
        values = torch.randn(tensor.shape, generator=gen) * 0.1
        if ".ln" in name or name.startswith("ln_"):
            values = values + (1.0 if name.endswith("weight") else 0.0)
        weights[name] = values.to(torch.float16).to(torch.float32)
    return weights


def write_open_clip_file(path: Path, seed: int = 0) -> Path:
    """A whole-CLIP open_clip state dict (`visual.*`; the text tower is left out)."""
    save_file({f"visual.{k}": v.contiguous() for k, v in tiny_weights(seed).items()}, str(path))
    return path


def write_comfy_file(path: Path, seed: int = 0) -> Path:
    """The same weights as ComfyUI keeps clip_vision files (transformers layout, float16),
    converted with ComfyUI's own open_clip -> transformers key conversion."""
    import comfy.clip_vision

    sd = comfy.clip_vision.convert_to_transformers({f"visual.{k}": v for k, v in tiny_weights(seed).items()}, "visual.")
    save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return path


def is_tiny_clip_vision(sd: dict) -> bool:
    """Whether a state dict in ComfyUI's (transformers') layout is this tiny ViT."""
    patch = sd.get("vision_model.embeddings.patch_embedding.weight")
    return patch is not None and patch.shape[0] == COMFY_CONFIG["hidden_size"] \
        and f"vision_model.encoder.layers.{COMFY_CONFIG['num_hidden_layers'] - 1}.layer_norm1.weight" in sd


def comfy_clip_vision(path: Path):
    """ComfyUI's ClipVisionModel for the tiny config, with the file's weights loaded by ComfyUI."""
    import comfy.clip_vision
    import comfy.utils

    model = comfy.clip_vision.ClipVisionModel(comfy_config_file())
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    if any(k.startswith("visual.") for k in sd):
        sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
    missing, unexpected = model.load_sd(sd)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def tiny_encoder_info(seed: int = 0) -> dict:
    from hypernet.encoders.encoder_info import EncoderInfo, projection_fingerprint

    return EncoderInfo(register_tiny_arch(), TINY_DIM, projection_fingerprint(tiny_weights(seed)["proj"])).to_dict()
