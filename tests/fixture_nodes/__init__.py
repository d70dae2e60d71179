"""Test-only ComfyUI nodes: stand-ins for CheckpointLoaderSimple that give the tiny SDXL- or
SD1.5-architecture MODEL with a CLIP and VAE of matching shapes, since no real checkpoint can
exist on the test machines. Linked into the test server's custom_nodes folder.

For the browser test, which runs the shipped workflows unchanged through the real frontend,
the stock CheckpointLoaderSimple gives the same tiny model for a checkpoint file that is a
marked stand-in (comfy_support.write_tiny_checkpoint, safetensors metadata `lora_hypernet_test`,
whose value says SDXL or SD1.5); every other file loads as usual.

It also teaches the stock CLIPVisionLoader the tiny CLIP ViT of tests/global_support.py:
ComfyUI picks a CLIP vision config only for ViT-L/H/G sizes, so for this one size the config
lookup falls back to the tiny config; loading, key conversion and encoding stay ComfyUI's own.
The tiny architecture is registered with open_clip too, as real ones ship with it."""
import hashlib
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))
import comfy.clip_vision  # noqa: E402
import comfy_support  # noqa: E402
import global_support  # noqa: E402

global_support.register_tiny_arch()
_stock_load_clipvision_from_sd = comfy.clip_vision.load_clipvision_from_sd


def _load_clipvision_from_sd(sd, prefix="", convert_keys=False):
    clip = _stock_load_clipvision_from_sd(sd, prefix, convert_keys)
    if clip is None and global_support.is_tiny_clip_vision(sd):
        clip = comfy.clip_vision.ClipVisionModel(global_support.comfy_config_file())
        clip.load_sd(sd)
    return clip


comfy.clip_vision.load_clipvision_from_sd = _load_clipvision_from_sd

import comfy.sd  # noqa: E402


def _tiny_checkpoint_mark(path) -> str | None:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("lora_hypernet_test")
    except Exception:
        return None


_stock_load_checkpoint_guess_config = comfy.sd.load_checkpoint_guess_config


def _load_checkpoint_guess_config(ckpt_path, *args, **kwargs):
    mark = _tiny_checkpoint_mark(ckpt_path)
    if mark == comfy_support.TINY_CHECKPOINT_MARK:
        return comfy_support.tiny_sdxl_patcher(seed=0), TinyClip(), TinyVae(), None
    if mark == comfy_support.TINY_SD15_CHECKPOINT_MARK:
        return (*tiny_sd15(), None)
    if mark == comfy_support.TINY_TRAINABLE_CHECKPOINT_MARK:
        return comfy_support.trainable_tiny_sdxl_patcher(seed=0), TinyClip(), TinyVae(), None
    return _stock_load_checkpoint_guess_config(ckpt_path, *args, **kwargs)


comfy.sd.load_checkpoint_guess_config = _load_checkpoint_guess_config


class TinyClip:
    """Text -> SDXL-shaped conditioning (context 64, pooled 1280), deterministic per text; for the
    tiny SD1.5 model, its context (96) and no pooled output."""

    def __init__(self, context_dim: int = 64, pooled: bool = True):
        self.context_dim, self.pooled = context_dim, pooled

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens, **_):
        seed = int.from_bytes(hashlib.sha256(str(tokens).encode()).digest()[:8], "little")
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, 77, self.context_dim, generator=gen)
        pooled = torch.randn(1, 1280, generator=gen)
        return [[cond, {"pooled_output": pooled} if self.pooled else {}]]


class TinyVae:
    """Latent [B,4,h,w] -> image [B,8h,8w,3] in 0..1, a fixed smooth map; encode is its rough
    inverse (8x8 means, logit), the fourth channel the brightness."""

    def encode(self, pixels):
        rgb = torch.nn.functional.avg_pool2d(pixels[..., :3].movedim(-1, 1).float(), 8)
        latent = torch.logit(rgb.clamp(0.02, 0.98))
        return torch.cat([latent, latent.mean(1, keepdim=True)], dim=1)

    def decode(self, samples):
        rgb = samples[:, :3].float()
        image = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="bilinear")
        return torch.sigmoid(image).movedim(1, -1)


class TinySDXLCheckpointLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "tiny-sdxl"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name):
        return comfy_support.tiny_sdxl_patcher(seed=0), TinyClip(), TinyVae()


def tiny_sd15():
    """MODEL, CLIP, VAE of the tiny SD1.5 model: CLIP gives its context and no pooled output."""
    clip = TinyClip(context_dim=comfy_support.TINY_SD15_UNET["context_dim"], pooled=False)
    return comfy_support.tiny_sd15_patcher(seed=0), clip, TinyVae()


class TinySD15CheckpointLoader(TinySDXLCheckpointLoader):
    def load(self, ckpt_name):
        return tiny_sd15()


NODE_CLASS_MAPPINGS = {"TinySDXLCheckpointLoader": TinySDXLCheckpointLoader,
                       "TinySD15CheckpointLoader": TinySD15CheckpointLoader}
