"""The glyph base model inside ComfyUI (needs ComfyUI on sys.path): an ordinary SDXL-family
MODEL, a VAE for the stock VAE Decode / VAE Encode, and CONDITIONING from the character tables.

Everything is ComfyUI's own machinery: the UNet is comfy.supported_models.SDXL's model class
(so KSampler, model_sampling, LoRA patching and model management treat it like any SDXL
checkpoint), and the VAE is comfy.sd.VAE built as ComfyUI's pixel-space VAE, with the fold as
its first stage.
"""
from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch

from .base_model import GlyphModelError, GlyphText
from .glyph_model_file import GlyphModelFile
from .pixel_fold import FACTOR, PixelFold

UNET_PREFIX = "diffusion_model."


def sdxl_model_config(unet_config: dict):
    return comfy.supported_models.SDXL(dict(unet_config))


def build_sdxl(unet_config: dict, device=None, dtype=torch.float32, manual_cast_dtype=None):
    """ComfyUI's SDXL BaseModel for this UNet config, weights uninitialised (as ComfyUI leaves them)."""
    model_config = sdxl_model_config(unet_config)
    model_config.set_inference_dtype(dtype, manual_cast_dtype)
    if device == "meta":
        with torch.device("meta"):
            return model_config.get_model({}, device="meta")
    return model_config.get_model({}, device=device)


def unet_shapes(unet_config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the UNet's weights for this config, from a model on the meta device."""
    model = build_sdxl(unet_config, device="meta")
    return {k[len(UNET_PREFIX):]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(UNET_PREFIX)}


def check_unet_state(unet_config: dict, state: dict[str, torch.Tensor], name: str) -> None:
    expected = unet_shapes(unet_config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or extra or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise GlyphModelError(f"glyph model {name}: its UNet weights do not match its UNet config ({'; '.join(parts)}). "
                              "The file is damaged or was edited; write it again with `python -m miniature.train_base`.")


def glyph_model_patcher(glyph: GlyphModelFile, name: str = "glyph model"):
    """The MODEL: the UNet as ComfyUI loads a diffusion model file (its dtype choice, offload
    device, ModelPatcher), so LoRA patches apply when ComfyUI loads it, never in place."""
    check_unet_state(glyph.unet_config, glyph.unet_state, name)
    mm = comfy.model_management
    model_config = sdxl_model_config(glyph.unet_config)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    params = sum(t.numel() for t in glyph.unet_state.values())
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model = build_sdxl(glyph.unet_config, device=offload_device, dtype=dtype, manual_cast_dtype=manual_cast)
    model.load_model_weights({UNET_PREFIX + k: v for k, v in glyph.unet_state.items()}, UNET_PREFIX)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


class FoldVAE(comfy.sd.VAE):
    """comfy.sd.VAE set up as ComfyUI's pixel-space VAE (devices, dtype, batching, [0, 1] <->
    [-1, 1], cropping to whole blocks), with the pixel fold as its first stage. The fold has no
    weights, so the patcher ComfyUI made around its own pass-through module has nothing of
    ours to move."""

    def __init__(self, fold: PixelFold):
        super().__init__(sd={"pixel_space_vae": torch.tensor(1.0)})
        self.first_stage_model = fold.eval()
        self.downscale_ratio = self.upscale_ratio = FACTOR
        self.latent_channels = FACTOR * FACTOR


def glyph_conditioning(text: GlyphText, chars: str) -> tuple[list, list]:
    """(positive, negative) CONDITIONING for drawing `chars` as one batch: one row per
    character, and the empty prompt repeated, for classifier-free guidance."""
    if not chars:
        raise GlyphModelError("Glyph Prompt needs at least one character to draw.")
    rows = text.rows(chars)
    with torch.no_grad():
        context, pooled = text.lookup(rows)
        empty_context, empty_pooled = text.lookup(torch.zeros_like(rows))
    return ([[context.clone(), {"pooled_output": pooled.clone()}]],
            [[empty_context.clone(), {"pooled_output": empty_pooled.clone()}]])


def empty_glyph_latent(count: int, glyph_size: int) -> dict:
    """The LATENT KSampler starts from: `count` glyphs of `glyph_size` pixels."""
    side = glyph_size // FACTOR
    return {"samples": torch.zeros(count, FACTOR * FACTOR, side, side,
                                   device=comfy.model_management.intermediate_device())}
