"""Training LoRAs on a ComfyUI model: one identity LoRA per call, restricted to a hypernet
layout's modules (the `collect` stage), and a short fine-tune of a sampled LoRA (Refine LoRA).

It lives outside `hypernet/` because it needs ComfyUI: ComfyUI loads the checkpoint
(`comfy.sd.load_checkpoint_guess_config`), ComfyUI's training adapter (`comfy.weight_adapter`)
holds the LoRA, ComfyUI's model management loads the model and its guider/`model_sampling`
compute the loss, as in its own Train LoRA node. No UNet code is ours.

Interface (stable; `python -m hypernet collect` builds on it):

    from lora_training import start_comfyui, TrainingSettings
    start_comfyui()                      # path argument, else $COMFYUI_PATH, else the ComfyUI
                                         # this pack is installed in; CPU when there is no CUDA
    from lora_training import IdentityTrainer
    trainer = IdentityTrainer(Path("sdxl.safetensors"), preset("sdxl-attn-r4"),
                              TrainingSettings(steps=500, learning_rate=1e-4, batch_size=1,
                                               resolution=1024, seed=0,
                                               caption_template="a photo of {token} person",
                                               class_images=(), lr_schedule="constant"))
    result = trainer.train(images=[Path(...), ...], captions=["a photo of sks person", ...] or None,
                           seed=7, init_lora=None, progress=lambda done, total: ...,
                           should_stop=lambda: False)
    result.state_dict   # kohya tensors, exactly the layout's modules (lora_up/lora_down/alpha)
    result.loss, result.base_loss, result.initial_loss, result.steps, result.seconds, result.record()

- `train` raises `HypernetError` (a ValueError) with a one-line reason for bad input: a missing
  or unreadable image, caption count, a starting LoRA of another layout. The constructor raises
  it for a checkpoint ComfyUI cannot load or a layout that does not fit the model.
- `should_stop()` returning True raises `TrainingStopped`; ComfyUI's Cancel raises ComfyUI's
  interrupt exception. Either way nothing is returned and the model carries no adapter.
- Losses: mean noise MSE (ComfyUI's x0 MSE / sigma^2) over `eval_draws` fixed noise/timestep
  draws per training image from the seed; `base_loss` is the base model alone on the same draws.
- Deterministic under a seed on one device type: fresh factors, batches, noise and timesteps
  all come from CPU generators seeded with `seed`.
- `train_lora(patcher, latents, conditioning, layout, ...)` is the same loop on an
  already-loaded MODEL, VAE latents and CONDITIONING (the Refine LoRA node uses it).

ComfyUI-free names (settings, results, finding ComfyUI) import without ComfyUI; the others
import `comfy.*` on first use, so call `start_comfyui()` before touching them.
"""
from .comfyui_env import find_comfyui, start_comfyui
from .settings import TrainingResult, TrainingSettings, TrainingStopped

_NEEDS_COMFYUI = {"IdentityTrainer": "identity", "train_lora": "trainer", "encode_images": "encoding",
                  "encode_caption": "encoding", "square_images": "encoding"}

__all__ = ["IdentityTrainer", "TrainingResult", "TrainingSettings", "TrainingStopped", "encode_caption",
           "encode_images", "find_comfyui", "square_images", "start_comfyui", "train_lora"]


def __getattr__(name):
    if name in _NEEDS_COMFYUI:
        import importlib
        module = importlib.import_module(f".{_NEEDS_COMFYUI[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
