"""Global image features in the graph: DiffLoRA's CLIP image condition from a CLIP_VISION model.

The node takes the CLIP vision model the way ComfyUI users already have it: the stock Load
CLIP Vision node's output (e.g. the ViT-H/14 that IPAdapter users keep in models/clip_vision).
It runs ComfyUI's own `encode_image` and uses its projected output `image_embeds`; the dataset
builder computes the same features with open_clip (hypernet.global_features), which
tests/test_global_features.py checks with the same random weights loaded both ways.
"""
from __future__ import annotations

import torch

from .comfy_glue import CATEGORY_GLOBAL, GlobalFeaturesType, clip_vision_spec, display_name, io
from .values import GlobalFeaturesValue


class EncodeGlobalImageFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetEncodeGlobalFeatures",
            display_name=display_name("Encode Global Image Features"),
            category=CATEGORY_GLOBAL,
            description="Encodes whole reference photos with a CLIP image encoder (centre crop) for hypernets "
                        "conditioned on global image features (DiffLoRA); several photos average into one identity.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="A CLIP ViT image encoder from Load CLIP Vision; the one "
                                                           "the hypernet's dataset was built with (e.g. CLIP-ViT-H-14)."),
                io.Image.Input("images", tooltip="One or more reference photos of the same person (a batch)."),
            ],
            outputs=[GlobalFeaturesType.Output("global_features", display_name="global_features",
                                               tooltip="The photos' CLIP image features (mean of the photos), for "
                                                       "Sample LoRA.")],
        )

    @classmethod
    def execute(cls, clip_vision, images: torch.Tensor) -> io.NodeOutput:
        from ..hypernet.common.tensors import l2_normalize, mean_embedding
        from ..hypernet.encoders.encoder_info import EncoderInfo, projection_fingerprint
        from ..hypernet.encoders.global_features import architectures_matching, describe_spec
        spec, projection = clip_vision_spec(clip_vision)
        rows = clip_vision.encode_image(images, crop=True)["image_embeds"]
        per_image = l2_normalize(rows.detach().float().cpu(), "an image feature vector")
        names = tuple(architectures_matching(spec))
        # Without a matching open_clip architecture the description stands in for the name, so
        # Sample LoRA's error says what this model is.
        info = EncoderInfo(names[0] if names else describe_spec(spec), int(spec["dim"]), projection_fingerprint(projection))
        return io.NodeOutput(GlobalFeaturesValue(mean_embedding(per_image), per_image, info.to_dict(), names))


NODES = [EncodeGlobalImageFeatures]
