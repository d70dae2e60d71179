"""Named layouts and the UNets they are cut from: SDXL-architecture UNets described by where
their attention is, without building them, and the presets the CLI and tests name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import HypernetError
from .layout import Layout, attention_layout


@dataclass(frozen=True)
class UnetSpec:
    """Where an SDXL-architecture UNet has attention: (ldm prefix, channels, depth) per transformer."""

    context_dim: int
    transformers: tuple[tuple[str, int, int], ...]


def _sdxl_style_transformers(channels: Sequence[int], depths: Sequence[int]) -> tuple[tuple[str, int, int], ...]:
    """Transformers of a 3-level SDXL-style UNet (num_res_blocks 2) from per-level channels and depths.

    Levels 1 and 2 carry transformers: input_blocks 4,5 and 7,8, the middle block, output_blocks
    0-2 (level 2) and 3-5 (level 1); level 0 has none, as in SDXL.
    """
    (_, c1, c2), (_, d1, d2) = channels, depths
    return tuple(
        [(f"input_blocks.{i}.1", c1, d1) for i in (4, 5)]
        + [(f"input_blocks.{i}.1", c2, d2) for i in (7, 8)]
        + [("middle_block.1", c2, d2)]
        + [(f"output_blocks.{i}.1", c2, d2) for i in (0, 1, 2)]
        + [(f"output_blocks.{i}.1", c1, d1) for i in (3, 4, 5)]
    )


UNET_SPECS = {
    # The SDXL base UNet: model_channels 320, channel_mult [1,2,4], transformer depth 2 and 10.
    "sdxl": UnetSpec(2048, _sdxl_style_transformers((320, 640, 1280), (0, 2, 10))),
    # DESIGN.md's tiny SDXL test UNet: model_channels 32, channel_mult [1,2,4], depth 1, context 64.
    "tiny-sdxl": UnetSpec(64, _sdxl_style_transformers((32, 64, 128), (0, 1, 1))),
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
    "sdxl-attn-r4": dict(unet="sdxl", rank=4, projections=("q", "k", "v", "out")),
    "sdxl-qv-r1": dict(unet="sdxl", rank=1, projections=("q", "v")),
    "tiny-attn-r4": dict(unet="tiny-sdxl", rank=4, projections=("q", "k", "v", "out")),
    # For synthetic benchmarks of a mid-size vector: the tiny UNet's 88 attention modules at rank 6.
    "synth-100k": dict(unet="tiny-sdxl", rank=6, projections=("q", "k", "v", "out")),
}


def preset(name: str) -> Layout:
    """A named layout: `sdxl-attn-r4` has 560 modules and 5,806,080 values, `sdxl-qv-r1` 280 and
    725,760, `tiny-attn-r4` 88 and 66,560, `synth-100k` 88 and 99,840."""
    if name not in PRESETS:
        raise ValueError(f"unknown layout preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    spec = dict(PRESETS[name])
    return attention_layout(unet_attention_shapes(spec.pop("unet")), base_model="sdxl", **spec)


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
