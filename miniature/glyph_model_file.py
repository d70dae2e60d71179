"""The glyph base model file: one .safetensors with the UNet, the character tables and the fold.

Tensors: `unet.<name>` (the diffusion model's state dict under ComfyUI's names, without its
`diffusion_model.` prefix), `text.context` [chars + 1, tokens, context_dim] and `text.pooled`
[chars + 1, 1280] (row 0: the empty prompt). Metadata (JSON strings): `format`, `version`,
`unet_config`, `fold`, `charset`, `glyph_size`, `prediction`, `training`.

Loading never unpickles and checks everything a hostile or damaged file could get wrong before
anything is built from it: the header, the config's keys and value ranges, and every tensor's
name, dtype and shape against what the config implies (the caller compares the UNet's shapes
with a model built on the meta device).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open

from .base_model import GLYPH_UNET, POOLED_DIM, GlyphModelError, GlyphText
from .pixel_fold import FACTOR, PixelFold

FORMAT = "lora-hypernet-glyph-model"
VERSION = "1"
PREDICTIONS = ("eps",)
# Bounds on what a config may ask ComfyUI to build: the miniature's UNet is 6.5 M parameters;
# these allow models up to roughly SD1.5 size and refuse absurd allocations.
_INT_BOUNDS = {"model_channels": (8, 512), "context_dim": (8, 2048), "num_head_channels": (8, 512),
               "image_size": (1, 1024), "in_channels": (4, 4), "out_channels": (4, 4),
               "adm_in_channels": (2816, 2816), "transformer_depth_middle": (0, 16)}


@dataclass
class GlyphModelFile:
    """What a glyph model file holds, on the CPU in float32."""

    unet_config: dict
    unet_state: dict[str, torch.Tensor]
    text: GlyphText
    glyph_size: int
    latent_scale: float
    shift: float
    prediction: str = "eps"
    training: dict = field(default_factory=dict)

    def fold(self) -> PixelFold:
        return PixelFold(self.latent_scale, self.shift)


def save_glyph_model(model: GlyphModelFile, path: str | os.PathLike, save=None) -> None:
    """Write `model` (float16 tensors). `save(tensors, path, metadata)` writes the file; the CLI
    passes hypernet.common.files.save_safetensors_atomic so nothing is half-written."""
    tensors = {f"unet.{k}": v.detach().to(torch.float16).contiguous() for k, v in model.unet_state.items()}
    tensors["text.context"] = model.text.context.detach().to(torch.float16).contiguous()
    tensors["text.pooled"] = model.text.pooled.detach().to(torch.float16).contiguous()
    metadata = {
        "format": FORMAT, "version": VERSION, "unet_config": json.dumps(model.unet_config, sort_keys=True),
        "fold": json.dumps(model.fold().describe(), sort_keys=True), "charset": model.text.charset,
        "glyph_size": str(model.glyph_size), "prediction": model.prediction,
        "training": json.dumps(model.training, sort_keys=True),
    }
    if save is None:
        from safetensors.torch import save_file as save
    save(tensors, str(path), metadata)


def _fail(path, what: str) -> GlyphModelError:
    return GlyphModelError(f"glyph model {os.path.basename(str(path))}: {what}. Use a file written by "
                           "`python -m miniature.train_base` (a .safetensors glyph model).")


def _json(meta: dict, key: str, path, kind: type):
    try:
        value = json.loads(meta[key])
    except KeyError:
        raise _fail(path, f"its metadata has no {key!r}") from None
    except ValueError:
        raise _fail(path, f"its metadata {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise _fail(path, f"its metadata {key!r} is not a JSON {kind.__name__}")
    return value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_unet_config(config: dict, path) -> dict:
    unknown = sorted(set(config) - set(GLYPH_UNET))
    missing = sorted(set(GLYPH_UNET) - set(config))
    if unknown or missing:
        raise _fail(path, f"its UNet config has unknown keys {unknown} / lacks {missing}")
    for key, (low, high) in _INT_BOUNDS.items():
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _fail(path, f"its UNet config has {key}={value!r}, outside {low}..{high}")
    for key in ("num_res_blocks", "channel_mult", "transformer_depth", "transformer_depth_output"):
        value = config[key]
        if (not isinstance(value, list) or not 1 <= len(value) <= 12
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16 for v in value)):
            raise _fail(path, f"its UNet config has {key}={value!r}, not a short list of small integers")
    if config["model_channels"] * max(config["channel_mult"]) > 2048:
        raise _fail(path, "its UNet config asks for more than 2048 channels")
    return config


def load_glyph_model(path: str | os.PathLike) -> GlyphModelFile:
    """Read and check a glyph model file; a GlyphModelError says what is wrong with a bad one."""
    if not str(path).endswith(".safetensors"):
        raise _fail(path, "only .safetensors files are read (nothing is unpickled)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise _fail(path, f"it is not a glyph model (metadata format {meta.get('format')!r}, expected {FORMAT!r})")
            if meta.get("version") != VERSION:
                raise _fail(path, f"format version {meta.get('version')!r} is not supported (this pack reads {VERSION})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise _fail(path, f"it is not a readable safetensors file ({exc})") from None
    except OSError as exc:
        raise _fail(path, f"it cannot be read ({exc.strerror or exc})") from None

    config = _check_unet_config(_json(meta, "unet_config", path, dict), path)
    fold = _json(meta, "fold", path, dict)
    scale, shift = fold.get("latent_scale"), fold.get("shift")
    if fold.get("kind") != "pixel_fold" or fold.get("factor") != FACTOR or not _number(scale) or not _number(shift) \
            or not scale > 0 or not -1 <= shift <= 1:
        raise _fail(path, f"its fold {fold!r} is not a pixel fold of factor {FACTOR} with a positive latent_scale "
                          "and a shift in [-1, 1]")
    charset = meta.get("charset", "")
    if not charset or len(set(charset)) != len(charset):
        raise _fail(path, "its charset is empty or repeats a character")
    try:
        glyph_size = int(meta.get("glyph_size", ""))
    except ValueError:
        raise _fail(path, "its glyph_size is not a number") from None
    if not 2 * FACTOR <= glyph_size <= 256 or glyph_size % (4 * FACTOR):
        raise _fail(path, f"its glyph_size {glyph_size} is not a multiple of {4 * FACTOR} up to 256")
    prediction = meta.get("prediction")
    if prediction not in PREDICTIONS:
        raise _fail(path, f"its prediction {prediction!r} is not one of {PREDICTIONS}")

    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise _fail(path, f"tensor {name} is {tensor.dtype}, not floating point")
        if not torch.isfinite(tensor).all():
            raise _fail(path, f"tensor {name} holds NaN or infinite values")
    context, pooled = tensors.pop("text.context", None), tensors.pop("text.pooled", None)
    tokens = context.shape[1] if context is not None and context.ndim == 3 else 0
    if context is None or tuple(context.shape) != (len(charset) + 1, tokens, config["context_dim"]) or not 1 <= tokens <= 77:
        raise _fail(path, f"tensor text.context is {None if context is None else tuple(context.shape)}, expected "
                          f"({len(charset) + 1}, 1..77 tokens, {config['context_dim']})")
    if pooled is None or tuple(pooled.shape) != (len(charset) + 1, POOLED_DIM):
        raise _fail(path, f"tensor text.pooled is {None if pooled is None else tuple(pooled.shape)}, expected "
                          f"({len(charset) + 1}, {POOLED_DIM})")
    text = GlyphText(charset, config["context_dim"], tokens)
    text.context.data, text.pooled.data = context.float(), pooled.float()
    unet = {}
    for name, tensor in tensors.items():
        if not name.startswith("unet."):
            raise _fail(path, f"unexpected tensor {name}")
        unet[name[len("unet."):]] = tensor.float()
    training = _json(meta, "training", path, dict) if "training" in meta else {}
    return GlyphModelFile(config, unet, text, glyph_size, float(scale), float(shift), prediction, training)
