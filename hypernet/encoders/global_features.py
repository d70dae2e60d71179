"""Global image features of the reference photos: a CLIP image encoder run through open_clip.

DiffLoRA conditions on the face (ArcFace) and on global features of the whole reference image
from a CLIP image encoder. This module builds such an encoder (weights read by clip_weights from
a .safetensors file, never a pickle), preprocesses images and encodes them to L2-normalised
vectors [n, dim].

The same encoder runs in two places, and both must give the same features for the same weights:

- here (the dataset builder, the CLI): open_clip's VisionTransformer with the named
  architecture (`--global-arch`, e.g. ViT-H-14), weights from a file in either layout:
  open_clip's (`visual.*`, or the visual tower without prefix) or the transformers layout
  ComfyUI keeps in models/clip_vision/ (`vision_model.*`, `visual_projection.weight`);
- in ComfyUI: the stock CLIPVisionLoader's CLIP_VISION model (nodes/global_nodes.py).

To make the two agree we deliberately mirror what ComfyUI does: weights are held at float16
precision (ComfyUI keeps CLIP vision models in float16, computing in float32), and images are
preprocessed the way ComfyUI's CLIP vision preprocessing does it (shorter side resized bicubic
with antialias, centre crop, 8-bit quantisation, CLIP mean/std). tests/test_global_features.py
checks the equality with random weights loaded both ways.

Encoder identity (encoder_info.EncoderInfo): the open_clip architecture name, the output size
and a fingerprint of the weights, recorded in the dataset manifest and the hypernet checkpoint
so that features from another encoder are an error instead of a silent drift.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..common.images import read_image
from ..common.tensors import l2_normalize
from ..errors import HypernetError
from .clip_weights import read_weights, vision_state_dict
from .encoder_info import EncoderInfo, projection_fingerprint

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- architecture

def open_clip_config(arch: str) -> dict:
    """open_clip's config for a built-in (or add_model_config-registered) architecture name."""
    import open_clip

    # hf-hub: and local-dir: names would fetch or read configs elsewhere; only known names here.
    config = open_clip.get_model_config(arch) if ":" not in arch else None
    if config is None:
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise HypernetError(f"unknown open_clip architecture {arch!r}; e.g. {', '.join(vits[:8])} "
                            "(ViT-H-14 is the one IPAdapter users keep in models/clip_vision)")
    return config


def comfyui_incompatibility(config: dict) -> str | None:
    """Why ComfyUI's CLIP vision model could not compute the same features as this open_clip
    architecture, or None when it can (a plain CLIP ViT: class-token pooling, LayerNorms,
    learned positions, GELU or QuickGELU, a linear projection)."""
    vision = dict(config.get("vision_cfg", {}))
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        return "it is not a plain ViT (timm or ResNet image tower)"
    plain = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
             "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None,
             "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
             "scale_attn": False, "scale_fc": False}
    for key, value in plain.items():
        if key in vision and vision[key] != value:
            return f"its vision_cfg sets {key}={vision[key]!r}"
    if vision.get("block_type") not in (None, "default"):
        return f"its vision_cfg sets block_type={vision['block_type']!r}"
    return None


def build_vision_tower(arch: str) -> tuple[torch.nn.Module, dict]:
    """An open_clip visual tower of this architecture (random weights) and its config."""
    from open_clip.model import _build_vision_tower  # the visual half of open_clip.create_model

    config = open_clip_config(arch)
    reason = comfyui_incompatibility(config)
    if reason is not None:
        raise HypernetError(f"open_clip architecture {arch!r} is not supported: {reason}, so ComfyUI's CLIP vision "
                            "model could not reproduce its features at use time. Use a plain CLIP ViT (e.g. ViT-H-14).")
    visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=bool(config.get("quick_gelu")))
    return visual, config


def vision_spec(config: dict) -> dict:
    """What decides a CLIP ViT's features besides its weights, from an open_clip config; the
    ComfyUI side builds the same dict from a CLIP_VISION model (nodes/comfy_glue.py)."""
    vision = config.get("vision_cfg", {})
    width = int(vision.get("width", 768))
    image_size = vision.get("image_size", 224)
    return {"width": width, "layers": int(vision.get("layers", 12)), "heads": width // int(vision.get("head_width", 64)),
            "mlp_width": int(width * float(vision.get("mlp_ratio", 4.0))), "patch_size": int(vision.get("patch_size", 16)),
            "image_size": int(image_size if isinstance(image_size, int) else image_size[0]),
            "dim": int(config["embed_dim"]), "quick_gelu": bool(config.get("quick_gelu", False)),
            "mean": _rounded(vision.get("image_mean") or OPENAI_MEAN), "std": _rounded(vision.get("image_std") or OPENAI_STD)}


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 5) for v in values)


def architectures_matching(spec: dict) -> list[str]:
    """The open_clip architectures (shortest name first) whose image tower is `spec`: how a CLIP
    vision model loaded by ComfyUI, which carries no architecture name, gets one."""
    import open_clip

    spec = dict(spec, mean=_rounded(spec["mean"]), std=_rounded(spec["std"]))
    names = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name)
        if config is None or comfyui_incompatibility(config) is not None:
            continue
        try:
            if vision_spec(config) == spec:
                names.append(name)
        except (KeyError, TypeError, ValueError):  # configs of other model families
            continue
    return sorted(names, key=lambda n: (len(n), n))


def describe_spec(spec: dict) -> str:
    act = "quick_gelu" if spec["quick_gelu"] else "gelu"
    return (f"CLIP ViT width {spec['width']}, {spec['layers']} layers, patch {spec['patch_size']}, "
            f"{spec['image_size']} px, {spec['dim']}-d, {act}")


# ---------------------------------------------------------------- images

def preprocess_images(images: torch.Tensor, size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] floats in 0..1 -> normalised pixels [B, 3, size, size].

    Same steps as ComfyUI's CLIP vision preprocessing (centre crop mode), so that features made
    here for the dataset equal those the node makes in ComfyUI: the shorter side is resized to
    `size` (bicubic, antialiased), the centre is cropped, values are quantised to 8 bit, then
    normalised with the encoder's mean and std.
    """
    if images.dim() != 4 or images.shape[-1] < 3:
        raise HypernetError(f"images must be [batch, height, width, channels] with RGB channels, not {list(images.shape)}")
    pixels = images[..., :3].float().movedim(-1, 1)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        resized = (round(scale * height), round(scale * width))
        pixels = torch.nn.functional.interpolate(pixels, size=resized, mode="bicubic", antialias=True)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = (pixels * 255).clamp(0, 255).round() / 255
    mean = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


# ---------------------------------------------------------------- the encoder

class GlobalImageEncoder:
    """An open_clip CLIP image encoder with its preprocessing and identity."""

    def __init__(self, visual: torch.nn.Module, config: dict, info: EncoderInfo, device: str | torch.device = "cpu"):
        self.visual = visual.eval().to(device)
        self.info = info
        self.name = info.name
        self.device = torch.device(device)
        vision = config["vision_cfg"]
        image_size = vision.get("image_size", 224)
        self.image_size = int(image_size if isinstance(image_size, int) else image_size[0])
        self.mean = tuple(vision.get("image_mean") or OPENAI_MEAN)
        self.std = tuple(vision.get("image_std") or OPENAI_STD)

    @classmethod
    def load(cls, path: str | os.PathLike, arch: str, device: str | torch.device = "cpu") -> "GlobalImageEncoder":
        """Load weights of architecture `arch` from a .safetensors file (open_clip or transformers layout)."""
        visual, config = build_vision_tower(arch)
        sd = vision_state_dict(read_weights(path))
        want = visual.state_dict()
        missing = sorted(set(want) - set(sd))
        wrong = sorted(k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape))
        if missing or wrong:
            detail = (f"missing {', '.join(missing[:4])}" if missing else
                      "; ".join(f"{k} is {list(sd[k].shape)}, {arch} needs {list(want[k].shape)}" for k in wrong[:3]))
            raise HypernetError(f"{path} does not hold {arch} image-encoder weights ({len(missing)} missing, "
                                f"{len(wrong)} of another shape: {detail}). Pass the --global-arch of this file.")
        # float16 precision, as ComfyUI holds CLIP vision weights (see the module docstring)
        visual.load_state_dict({k: sd[k].to(torch.float16).to(torch.float32) for k in want})
        for key, value in visual.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise HypernetError(f"{path}: tensor {key} does not fit float16 (values beyond ±65504)")
        info = EncoderInfo(arch, int(config["embed_dim"]), projection_fingerprint(visual.proj))
        return cls(visual, config, info, device)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> L2-normalised features [B, dim], float32 on the CPU."""
        rows = []
        for start in range(0, images.shape[0], batch_size):
            pixels = preprocess_images(images[start:start + batch_size].to(self.device), self.image_size, self.mean, self.std)
            rows.append(self.visual(pixels).float().cpu())
        if not rows:
            raise HypernetError("no images to encode")
        return l2_normalize(torch.cat(rows), "an image feature vector")

    def encode_file(self, path: str | os.PathLike) -> torch.Tensor:
        """One photo file -> its L2-normalised feature vector [dim].

        The photo becomes what ComfyUI's LoadImage gives the node ([H, W, 3] floats in 0..1, EXIF
        rotation applied), read through read_image's pixel budget."""
        pixels = torch.from_numpy(read_image(path).astype(np.float32) / 255.0)
        return self.encode(pixels[None])[0]
