"""What the nodes need from ComfyUI, in one place: the V3 node API, our socket types, key maps,
shapes, progress, cancel, CLIP vision."""
from __future__ import annotations

import weakref

import comfy.lora
import comfy.model_management
import comfy.utils
import torch
# A versioned V3 API module, not `latest` (which moves): v0_0_2 ships in every ComfyUI we
# support (0.3.75 through 0.33.0) and re-exports the same `io`, `ui` and `ComfyExtension`.
from comfy_api.v0_0_2 import ComfyExtension, io, ui  # noqa: F401

from . import values

# Socket types (prefixed: see values.py), categories and display names of this pack.
FaceAnalyzerType = io.Custom(values.FACE_ANALYZER)
FaceEmbeddingType = io.Custom(values.FACE_EMBEDDING)
GlobalFeaturesType = io.Custom(values.GLOBAL_FEATURES)
HypernetType = io.Custom(values.HYPERNET)
LoraLatentType = io.Custom(values.LORA_LATENT)
LoraType = io.Custom(values.LORA)
GlyphTextType = io.Custom(values.GLYPH_TEXT)

PACK = "LoRA Hypernet"
CATEGORY_FACE = f"{PACK}/face"
CATEGORY_GLOBAL = f"{PACK}/global features"
CATEGORY_HYPERNET = f"{PACK}/hypernet"
CATEGORY_LORA = f"{PACK}/lora"
CATEGORY_MINIATURE = f"{PACK}/typeface miniature"


def shipped_models_dir(folder: str) -> str:
    """The pack's own models/<folder>/: the trained typeface miniature ships there, so its
    example workflow runs on a fresh install without downloads."""
    import os
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", folder)


def register_model_folder(folder: str) -> None:
    """models/<folder>/ for .safetensors files, keeping any extra paths a user's
    extra_model_paths.yaml already gave it, and the pack's shipped files last (a user's file
    of the same name wins)."""
    import os
    import folder_paths
    paths = [os.path.join(folder_paths.models_dir, folder)]
    if folder in folder_paths.folder_names_and_paths:
        paths += [p for p in folder_paths.get_folder_paths(folder) if p not in paths]
    shipped = shipped_models_dir(folder)
    if os.path.isdir(shipped) and shipped not in paths:
        paths.append(shipped)
    folder_paths.folder_names_and_paths[folder] = (paths, {".safetensors"})


def display_name(name: str) -> str:
    """Every display name starts with the pack's name, so a search for it finds all our nodes
    and none collides with another pack's "Apply LoRA"."""
    return f"{PACK}: {name}"


# Per base model (every clone of a MODEL shares it): building the map walks the whole UNet
# (about 80 ms for SDXL on a CPU, a tenth of a personalization), and patches never change
# weight shapes. Weak keys: a model ComfyUI frees drops out of the cache.
_unet_shapes: "weakref.WeakKeyDictionary[object, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def unet_lora_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every LoRA module name ComfyUI accepts for this MODEL, with its weight's shape."""
    shapes = _unet_shapes.get(model.model)
    if shapes is None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        state = model.model.state_dict()
        shapes = {name: tuple(state[key].shape) for name, key in key_map.items() if key in state}
        _unet_shapes[model.model] = shapes
    return dict(shapes)  # a copy: callers may add the CLIP's names


def clip_lora_shapes(clip) -> dict[str, tuple[int, ...]]:
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    state = clip.cond_stage_model.state_dict()
    return {name: tuple(state[key].shape) for name, key in key_map.items() if key in state}


def progress_callback(total: int):
    """A callback for hypernet loops, called with the number of steps done: advances a
    ProgressBar and raises ComfyUI's interrupt exception when the user pressed Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def step(done: int, *_):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return step


def clip_vision_spec(clip_vision) -> tuple[dict, torch.Tensor]:
    """What decides a CLIP_VISION model's features besides its weights, in the form of
    hypernet.encoders.global_features.vision_spec, read off ComfyUI's ClipVisionModel; and the
    projection weight oriented [width, dim] as open_clip stores it."""
    import comfy.clip_model

    from ..hypernet.errors import HypernetError

    model = getattr(clip_vision, "model", None)
    vision = getattr(model, "vision_model", None)
    projection = getattr(model, "visual_projection", None)
    # Without a projection (SigLIP-style configs) ComfyUI 0.3.75 sets a lambda there and 0.33
    # a torch.nn.Identity(): neither has a weight matrix.
    weight = getattr(projection, "weight", None)
    if (vision is None or getattr(vision.embeddings, "class_embedding", None) is None
            or not isinstance(projection, torch.nn.Module) or not isinstance(weight, torch.Tensor) or weight.ndim != 2):
        raise HypernetError("Encode Global Image Features needs a CLIP ViT image encoder with a projection (such as "
                            "CLIP-ViT-H-14 in models/clip_vision); SigLIP and DINOv2 models give other features.")
    layer = vision.encoder.layers[0]
    activation = next((name for name, fn in comfy.clip_model.ACTIVATIONS.items() if fn is layer.mlp.activation), None)
    if activation not in ("gelu", "quick_gelu"):
        raise HypernetError(f"this CLIP vision model uses the activation {activation!r}, which no open_clip CLIP ViT "
                            "has; global features need a CLIP ViT such as CLIP-ViT-H-14")
    spec = {"width": vision.embeddings.patch_embedding.out_channels, "layers": len(vision.encoder.layers),
            "heads": layer.self_attn.heads, "mlp_width": layer.mlp.fc1.out_features,
            "patch_size": vision.embeddings.patch_embedding.kernel_size[0], "image_size": int(clip_vision.image_size),
            "dim": projection.weight.shape[0], "quick_gelu": activation == "quick_gelu",
            "mean": tuple(clip_vision.image_mean), "std": tuple(clip_vision.image_std)}
    return spec, projection.weight.detach().t()
