"""What the nodes need from ComfyUI, in one place: key maps, shapes, progress, cancel."""
from __future__ import annotations

import weakref

import comfy.lora
import comfy.model_management
import comfy.utils


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
