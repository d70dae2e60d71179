"""LORA values in the graph: apply one to a MODEL (and CLIP) through ComfyUI's patcher."""
from __future__ import annotations

from dataclasses import dataclass, field

import comfy.sd
import torch

from ..hypernet.errors import HypernetError
from ..hypernet.layout import Layout, layout_mismatches
from .comfy_glue import clip_lora_shapes, unet_lora_shapes

CATEGORY = "LoRA Synthesis"


@dataclass(frozen=True)
class LoraValue:
    """The LORA type: kohya-keyed tensors (exactly what Save LoRA writes) and their layout."""

    state_dict: dict[str, torch.Tensor]
    layout: Layout
    metadata: dict[str, str] = field(default_factory=dict)


def _check_fits(layout: Layout, model, clip) -> None:
    unet_modules = [m for m in layout if m.name.startswith("lora_unet_")]
    shapes = unet_lora_shapes(model)
    if clip is not None and len(unet_modules) < len(layout):
        shapes.update(clip_lora_shapes(clip))
    problems = layout_mismatches(layout, shapes)
    if problems:
        raise HypernetError(
            f"This LoRA (layout {layout.fingerprint}, made for base model '{layout.base_model}') does not fit the "
            f"connected MODEL: {'; '.join(problems)}. Connect the checkpoint the hypernet was trained for"
            + (" and its CLIP" if len(unet_modules) < len(layout) else "") + ".")


class ApplyLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to personalise (left unchanged; a patched copy is returned)."}),
                "lora": ("LORA", {"tooltip": "A LoRA from Decode LoRA."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                                             "tooltip": "How strongly the LoRA changes the model; 0 leaves it as it is."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Only needed when the LoRA also has text-encoder modules."}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The patched model, for the KSampler.", "The patched CLIP (the input CLIP when the LoRA has no text-encoder modules).")
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Patches the MODEL with a LORA the way ComfyUI's own LoRA loader does: weights change when ComfyUI loads the model, never in place."

    def apply(self, model, lora: LoraValue, strength_model: float, clip=None, strength_clip: float = 1.0):
        needs_clip = any(not m.name.startswith("lora_unet_") for m in lora.layout)
        if needs_clip and clip is None:
            raise HypernetError("This LoRA also changes the text encoder: connect the CLIP input of Apply LoRA.")
        _check_fits(lora.layout, model, clip if needs_clip else None)
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip if needs_clip else None, lora.state_dict,
                                                            strength_model, strength_clip)
        return (new_model, new_clip if needs_clip else clip)


NODES = {
    "LoraHypernetApplyLoRA": (ApplyLoRA, "Apply LoRA (Hypernet)"),
}
