"""The ComfyUI side of `python -m hypernet evaluate-images`: draw images with a base model and
a LoRA through ComfyUI's own loading, LoRA patching and sampling, and train or refine LoRAs on
reference images through the pack's trainer (lora_training).

It lives outside `hypernet/` because it needs ComfyUI; the command imports it by name at run
time (as `collect` imports lora_training), so `hypernet` never imports ComfyUI.

Interface (what the command uses):

    import image_eval
    image_eval.start_comfyui()                       # lora_training's: COMFYUI_PATH, CPU without CUDA
    renderer = image_eval.Renderer(Path("base.safetensors"), DrawSettings(steps=20, cfg=3.0, ...))
    renderer.kind                                    # "glyph" (the miniature's glyph model) or "checkpoint"
    renderer.check_captions(["A", "b"])              # HypernetError for a caption the base cannot draw
    images = renderer.draw(lora, prompts, seeds)     # uint8 [len(prompts) * len(seeds), H, W, 3]
    result = renderer.train(photos, captions, layout, steps=, learning_rate=, seed=, init_lora=)

`lora` is None (the base model) or a LoraWeights; it is applied with comfy.sd.load_lora_for_models
after a check that every module fits the MODEL (else a HypernetError naming the mismatches).
"""
from lora_training import start_comfyui

from .settings import DrawSettings

__all__ = ["DrawSettings", "Renderer", "start_comfyui"]


def __getattr__(name):
    if name == "Renderer":
        from .renderer import Renderer
        return Renderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
