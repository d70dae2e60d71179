"""Named layouts and the UNets they are cut from: SDXL- and SD1.5-architecture UNets described
by where their attention is, without building them, and the presets the CLI and tests name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import HypernetError
from .layout import Layout, attention_layout


@dataclass(frozen=True)
class UnetSpec:
    """Where a UNet has attention: (ldm prefix, channels, depth) per transformer, and its base model."""

    context_dim: int
    transformers: tuple[tuple[str, int, int], ...]
    base_model: str = "sdxl"


def _unet_transformers(channels: Sequence[int], depths: Sequence[int], middle_depth: int
                       ) -> tuple[tuple[str, int, int], ...]:
    """Transformers of an ldm UNet with two res blocks per level, from per-level channels and depths.

    Level L has input_blocks 3L+1 and 3L+2 and, counted from the deepest level, output_blocks
    3(levels-1-L) to 3(levels-1-L)+2; the middle block works at the deepest level's channels.
    """
    levels = [(level, c, d) for level, (c, d) in enumerate(zip(channels, depths)) if d]
    last = len(channels) - 1
    return tuple(
        [(f"input_blocks.{3 * level + i}.1", c, d) for level, c, d in levels for i in (1, 2)]
        + ([("middle_block.1", channels[-1], middle_depth)] if middle_depth else [])
        + [(f"output_blocks.{3 * (last - level) + i}.1", c, d) for level, c, d in reversed(levels) for i in (0, 1, 2)]
    )


UNET_SPECS = {
    # The SDXL base UNet: model_channels 320, channel_mult [1,2,4], transformer depth 2 and 10.
    "sdxl": UnetSpec(2048, _unet_transformers((320, 640, 1280), (0, 2, 10), 10)),
    # DESIGN.md's tiny SDXL test UNet: model_channels 32, channel_mult [1,2,4], depth 1, context 64.
    "tiny-sdxl": UnetSpec(64, _unet_transformers((32, 64, 128), (0, 1, 1), 1)),
    # The SD1.5 UNet: model_channels 320, channel_mult [1,2,4,4], depth 1 on the first three
    # levels and in the middle, CLIP-L context 768 (ComfyUI's supported_models.SD15).
    "sd15": UnetSpec(768, _unet_transformers((320, 640, 1280, 1280), (1, 1, 1, 0), 1), "sd15"),
    # The tiny SD1.5 test UNet: SD1.5's blocks at model_channels 32 and context 96.
    "tiny-sd15": UnetSpec(96, _unet_transformers((32, 64, 128, 128), (1, 1, 1, 0), 1), "sd15"),
}
SDXL_CONTEXT_DIM = UNET_SPECS["sdxl"].context_dim
SDXL_TRANSFORMERS = UNET_SPECS["sdxl"].transformers


def unet_attention_shapes(unet: str = "sdxl") -> dict[str, tuple[int, int]]:
    """Weight shapes of every attention projection of a UNet in UNET_SPECS, by ldm parameter name."""
    spec = UNET_SPECS[unet]
    shapes = {}
    for prefix, dim, depth in spec.transformers:
        for block in range(depth):
            base = f"{prefix}.transformer_blocks.{block}"
            for which, context in (("attn1", dim), ("attn2", spec.context_dim)):
                shapes[f"{base}.{which}.to_q.weight"] = (dim, dim)
                shapes[f"{base}.{which}.to_k.weight"] = (dim, context)
                shapes[f"{base}.{which}.to_v.weight"] = (dim, context)
                shapes[f"{base}.{which}.to_out.0.weight"] = (dim, dim)
    return shapes


def sdxl_attention_shapes() -> dict[str, tuple[int, int]]:
    """Weight shapes of every attention projection in the SDXL base UNet (70 self, 70 cross).

    Tests check this table against ComfyUI's SDXL UNet built on the meta device.
    """
    return unet_attention_shapes("sdxl")


# The tiny presets have base model "sdxl": the tiny test UNet is ComfyUI's SDXL model class, and
# its module shapes, not the tag, tell it apart from the real one.
PRESETS = {
    # weights2weights' identity LoRAs (PEFT, rank 1, lora_alpha 27 on to_q and to_v of every
    # self- and cross-attention): 99,648 values, the layout LoRA Diffusion trained on.
    "sd15-w2w": dict(unet="sd15", rank=1, projections=("q", "v"), alpha=27.0),
    "sd15-attn-r4": dict(unet="sd15", rank=4, projections=("q", "k", "v", "out")),
    # The w2w layout on the tiny SD1.5 test UNet: the same 64 modules and PEFT keys, small factors.
    "tiny-sd15-w2w": dict(unet="tiny-sd15", rank=1, projections=("q", "v"), alpha=27.0),
    "sdxl-attn-r4": dict(unet="sdxl", rank=4, projections=("q", "k", "v", "out")),
    "sdxl-qv-r1": dict(unet="sdxl", rank=1, projections=("q", "v")),
    "tiny-attn-r4": dict(unet="tiny-sdxl", rank=4, projections=("q", "k", "v", "out")),
    # The typeface miniature's identity LoRAs: rank 2 keeps its shipped hypernet small (issue 17).
    "tiny-attn-r2": dict(unet="tiny-sdxl", rank=2, projections=("q", "k", "v", "out")),
    # For synthetic benchmarks of a mid-size vector: the tiny UNet's 88 attention modules at rank 6.
    "synth-100k": dict(unet="tiny-sdxl", rank=6, projections=("q", "k", "v", "out")),
}


def preset(name: str) -> Layout:
    """A named layout: `sdxl-attn-r4` has 560 modules and 5,806,080 values, `sdxl-qv-r1` 280 and
    725,760, `tiny-attn-r4` 88 and 66,560, `tiny-attn-r2` 88 and 33,280, `synth-100k` 88 and 99,840, `sd15-w2w` 64 and 99,648,
    `sd15-attn-r4` 128 and 797,184, `tiny-sd15-w2w` 64 and 10,272."""
    if name not in PRESETS:
        raise ValueError(f"unknown layout preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    spec = dict(PRESETS[name])
    unet = spec.pop("unet")
    return attention_layout(unet_attention_shapes(unet), base_model=UNET_SPECS[unet].base_model, **spec)


def load_layout(spec: str) -> Layout:
    """A layout from a preset name or from a JSON file (as Layout.to_json writes), for CLI options."""
    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise HypernetError(f"--layout {spec!r} is neither a layout preset ({', '.join(sorted(PRESETS))}) "
                            "nor an existing layout JSON file")
    try:
        return Layout.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise HypernetError(f"layout file {path} is not a valid layout: {exc}") from exc
