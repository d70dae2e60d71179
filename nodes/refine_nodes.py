"""Refine LoRA: a few training steps from a sampled LoRA on the reference photos
(HyperDreamBooth's hypernet + fast fine-tune; HyperLoRA's README advises about 50 steps)."""
from __future__ import annotations

from ..hypernet.lora.lora_io import lora_from_state_dict
from ..lora_training.encoding import encode_images, square_images
from ..lora_training.trainer import train_lora
from .comfy_glue import CATEGORY_LORA, LoraType, display_name, io, progress_callback
from .lora_nodes import _check_fits, _lora
from .values import LoraValue

DEFAULT_STEPS = 50


class RefineLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetRefineLoRA",
            display_name=display_name("Refine LoRA"),
            category=CATEGORY_LORA,
            description="Trains a LoRA from Decode LoRA for a few steps on the reference photos, on the connected "
                        "MODEL through ComfyUI's model management (no second copy of the model; the MODEL itself "
                        "is left unchanged). Shows the loss on the photos before and after.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the LoRA is for (the one Apply LoRA patches)."),
                io.Vae.Input("vae", tooltip="The VAE of that checkpoint: encodes the reference photos."),
                io.Conditioning.Input("positive", tooltip="The caption to train with, from CLIP Text Encode, e.g. "
                                                          "'a photo of sks person'."),
                io.Image.Input("images", tooltip="The reference photos of the person (a batch)."),
                LoraType.Input("lora", tooltip="The LoRA to start from, from Decode LoRA."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=5000,
                             tooltip="Training steps; about 50 refine a sampled LoRA (HyperLoRA's advice)."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-6, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate of the LoRA factors."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise, timesteps and photo order; same seed, same LoRA on the same device type."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=64,
                             tooltip="The photos are centre-cropped to squares of this size (SDXL: 1024, SD1.5: 512)."),
            ],
            outputs=[LoraType.Output("lora_out", display_name="lora",
                                     tooltip="The refined LoRA, for Apply LoRA and Save LoRA.")],
        )

    @classmethod
    def execute(cls, model, vae, positive, images, lora: LoraValue, steps: int, learning_rate: float, seed: int,
                resolution: int) -> io.NodeOutput:
        lora = _lora(lora, "Refine LoRA")
        _check_fits(lora.layout, model, None)
        latents = encode_images(vae, square_images(images, resolution))
        result = train_lora(model, latents, [positive] * latents.shape[0], lora.layout, steps=steps,
                            learning_rate=learning_rate, seed=seed, init_lora=lora_from_state_dict(lora.state_dict),
                            progress=progress_callback(steps))
        metadata = {**lora.metadata, "hypernet.refine_steps": str(steps), "hypernet.refine_learning_rate": str(learning_rate),
                    "hypernet.refine_seed": str(seed), "hypernet.refine_loss_before": f"{result.initial_loss:.6g}",
                    "hypernet.refine_loss_after": f"{result.loss:.6g}"}
        report = f"loss on the photos {result.initial_loss:.4f} -> {result.loss:.4f} in {steps} steps"
        return io.NodeOutput(LoraValue(result.state_dict, lora.layout, metadata), ui={"text": [report]})


NODES = [RefineLoRA]
