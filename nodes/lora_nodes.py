"""LORA values in the graph: apply one to a MODEL (and CLIP) through ComfyUI's patcher."""
from __future__ import annotations

import os

import comfy.sd

from ..hypernet.errors import HypernetError
from ..hypernet.lora.layout import Layout, layout_mismatches
from .comfy_glue import CATEGORY_LORA, LoraType, clip_lora_shapes, display_name, io, unet_lora_shapes
from .values import LORA, LoraValue, expect


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


def _lora(value, node: str) -> LoraValue:
    return expect(value, LoraValue, LORA, f"{node}'s lora input", "Decode LoRA")


class ApplyLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetApplyLoRA",
            display_name=display_name("Apply LoRA"),
            category=CATEGORY_LORA,
            description="Patches the MODEL with a LoRA from Decode LoRA the way ComfyUI's own LoRA loader does: "
                        "weights change when ComfyUI loads the model, never in place.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to personalise (left unchanged; a patched copy "
                                                "is returned)."),
                LoraType.Input("lora", tooltip="A LoRA from Decode LoRA."),
                io.Float.Input("strength_model", default=1.0, min=-20.0, max=20.0, step=0.01,
                               tooltip="How strongly the LoRA changes the model; 0 leaves it as it is."),
                io.Clip.Input("clip", optional=True, tooltip="Only needed when the LoRA also has text-encoder modules."),
                io.Float.Input("strength_clip", default=1.0, min=-20.0, max=20.0, step=0.01, optional=True,
                               tooltip="How strongly the LoRA changes the text encoder (when it has modules there)."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="MODEL", tooltip="The patched model, for the KSampler."),
                io.Clip.Output("clip_out", display_name="CLIP",
                               tooltip="The patched CLIP (the input CLIP when the LoRA has no text-encoder modules)."),
            ],
        )

    @classmethod
    def execute(cls, model, lora: LoraValue, strength_model: float, clip=None, strength_clip: float = 1.0) -> io.NodeOutput:
        lora = _lora(lora, "Apply LoRA")
        needs_clip = any(not m.name.startswith("lora_unet_") for m in lora.layout)
        if needs_clip and clip is None:
            raise HypernetError("This LoRA also changes the text encoder: connect the CLIP input of Apply LoRA.")
        _check_fits(lora.layout, model, clip if needs_clip else None)
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip if needs_clip else None, lora.state_dict,
                                                            strength_model, strength_clip)
        return io.NodeOutput(new_model, new_clip if needs_clip else clip)


class SaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetSaveLoRA",
            display_name=display_name("Save LoRA"),
            category=CATEGORY_LORA,
            description="Writes the LoRA as an ordinary kohya .safetensors file that ComfyUI, A1111/Forge and kohya load.",
            is_output_node=True,
            inputs=[
                LoraType.Input("lora", tooltip="A LoRA from Decode LoRA."),
                io.String.Input("filename_prefix", default="hypernet/person",
                                tooltip="File name (and sub-folder) for the LoRA; a counter is added, nothing is "
                                        "overwritten."),
                io.Combo.Input("destination", options=["loras", "output"], default="loras",
                               tooltip="models/loras (the stock LoraLoader lists it) or the output folder."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, lora: LoraValue, filename_prefix: str, destination: str) -> io.NodeOutput:
        import folder_paths

        from ..hypernet.common.files import check_filename_prefix, save_safetensors_new
        check_filename_prefix(filename_prefix)  # before ComfyUI's path code sees it: its errors are bare
        lora = _lora(lora, "Save LoRA")
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
        # The frontend shows `text` under the node; /history keeps it for scripts.
        return io.NodeOutput(ui={"text": [f"saved {destination}/{rel}"]})


NODES = [ApplyLoRA, SaveLoRA]
