"""LORA values in the graph: apply one to a MODEL (and CLIP) through ComfyUI's patcher."""
from __future__ import annotations

import os

import comfy.sd

from ..hypernet.errors import HypernetError
from ..hypernet.lora.layout import Layout, layout_mismatches
from .comfy_glue import clip_lora_shapes, unet_lora_shapes
from .values import LoraValue

CATEGORY = "LoRA Synthesis"


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




class SaveLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": ("LORA",),
            "filename_prefix": ("STRING", {"default": "hypernet/person", "tooltip": "File name (and sub-folder) for the LoRA; a counter is added, nothing is overwritten."}),
            "destination": (["loras", "output"], {"default": "loras", "tooltip": "models/loras (the stock LoraLoader lists it) or the output folder."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes the LoRA as an ordinary kohya .safetensors file that ComfyUI, A1111/Forge and kohya load."

    def save(self, lora: LoraValue, filename_prefix: str, destination: str):
        import folder_paths

        from ..hypernet.common.files import check_filename_prefix, save_safetensors_new
        check_filename_prefix(filename_prefix)  # before ComfyUI's path code sees it: its errors are bare
        root = folder_paths.get_folder_paths("loras")[0] if destination == "loras" else folder_paths.get_output_directory()
        os.makedirs(root, exist_ok=True)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        os.makedirs(folder, exist_ok=True)
        while True:
            path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
            if save_safetensors_new(lora.state_dict, path, lora.metadata):
                break
            counter += 1  # someone else took this name meanwhile; never overwrite
        rel = os.path.relpath(path, root)
        return {"ui": {"text": [f"saved {destination}/{rel}"]}}


NODES = {
    "LoraHypernetApplyLoRA": (ApplyLoRA, "Apply LoRA (Hypernet)"),
    "LoraHypernetSaveLoRA": (SaveLoRA, "Save LoRA (Hypernet)"),
}
