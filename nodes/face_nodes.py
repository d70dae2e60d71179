"""Faces in the graph: load an insightface model folder, embed reference photos, mix people."""
from __future__ import annotations

import os

import folder_paths
import numpy as np
import torch

from ..hypernet.errors import HypernetError
from .comfy_glue import progress_callback
from .values import FaceEmbeddingValue

CATEGORY = "LoRA Synthesis"
PROVIDERS = ["CPU", "CUDA", "ROCm", "CoreML"]
DEFAULT_FACE_MODEL = "antelopev2"


def insightface_model_roots() -> list[str]:
    """`models/insightface/models/`, where IPAdapter-FaceID, InstantID and PuLID keep them too."""
    roots = [os.path.join(folder_paths.models_dir, "insightface", "models")]
    if "insightface" in folder_paths.folder_names_and_paths:  # extra_model_paths.yaml may add more
        roots += [os.path.join(p, "models") for p in folder_paths.get_folder_paths("insightface")]
    return list(dict.fromkeys(roots))


def face_model_names() -> list[str]:
    names = set()
    for root in insightface_model_roots():
        if os.path.isdir(root):
            names.update(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    # Listed even when absent, so the node says where to put it instead of failing validation.
    return sorted(names) or [DEFAULT_FACE_MODEL]


def face_model_dir(name: str) -> str:
    for root in insightface_model_roots():
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return os.path.join(insightface_model_roots()[0], name)


def images_to_uint8(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE [B,H,W,C] floats in 0..1 -> list of RGB uint8 arrays."""
    arrays = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return list(arrays)


class LoadFaceAnalyzer:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (face_model_names(), {"tooltip": "insightface model folder in models/insightface/models/ (antelopev2 or buffalo_l). "
                                                            "Use the one the hypernet was trained with."}),
            "provider": (PROVIDERS, {"default": "CPU", "tooltip": "onnxruntime device; falls back to CPU with a warning when not available."}),
        }}

    RETURN_TYPES = ("FACE_ANALYZER",)
    OUTPUT_TOOLTIPS = ("Face detector and ArcFace recogniser, for Face Embed.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an insightface face model folder (never downloads)."

    def load(self, model_name: str, provider: str):
        from ..hypernet.encoders.face import load_face_analyzer
        return (load_face_analyzer(face_model_dir(model_name), providers=(provider,)),)


class FaceEmbed:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analyzer": ("FACE_ANALYZER",),
            "images": ("IMAGE", {"tooltip": "One or more reference photos of the same person (a batch)."}),
            "skip_photos_without_face": ("BOOLEAN", {"default": False, "tooltip": "Skip photos where no face is found instead of stopping with an error."}),
        }}

    RETURN_TYPES = ("FACE_EMBEDDING", "IMAGE")
    RETURN_NAMES = ("face_embedding", "face_crops")
    OUTPUT_TOOLTIPS = ("The identity: mean of the photos' ArcFace embeddings.", "The aligned faces that were used (preview).")
    FUNCTION = "embed"
    CATEGORY = CATEGORY
    DESCRIPTION = "Finds the largest face in each photo and embeds it with ArcFace; several photos average into one identity."

    def embed(self, face_analyzer, images: torch.Tensor, skip_photos_without_face: bool):
        photos = images_to_uint8(images)
        result = face_analyzer.embed_images(photos, skip_missing=skip_photos_without_face,
                                            on_progress=progress_callback(len(photos)))
        crops = torch.from_numpy(np.stack([face.crop for face in result.faces])).float() / 255.0
        value = FaceEmbeddingValue(
            embedding=torch.from_numpy(result.identity).float(),
            per_image=torch.from_numpy(result.embeddings).float(),
            model_name=result.model_name,
            used_images=tuple(result.used),
            skipped_images=tuple(result.skipped),
        )
        return (value, crops)


class MixIdentities:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_a": ("FACE_EMBEDDING",),
            "face_b": ("FACE_EMBEDDING",),
            "ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "0 gives face A, 1 gives face B; in between walks the sphere of identities from A to B."}),
        }}

    RETURN_TYPES = ("FACE_EMBEDDING",)
    RETURN_NAMES = ("face_embedding",)
    FUNCTION = "mix"
    CATEGORY = CATEGORY
    DESCRIPTION = "Blends two people by spherical interpolation of their face embeddings."

    def mix(self, face_a: FaceEmbeddingValue, face_b: FaceEmbeddingValue, ratio: float):
        from ..hypernet.encoders.face import slerp
        if face_a.model_name != face_b.model_name:
            raise HypernetError(f"Mix Identities needs two embeddings from the same face model, got "
                                f"'{face_a.model_name}' and '{face_b.model_name}'.")
        mixed = torch.from_numpy(slerp(face_a.embedding.numpy(), face_b.embedding.numpy(), ratio)).float()
        return (FaceEmbeddingValue(mixed, torch.cat([face_a.per_image, face_b.per_image]), face_a.model_name),)


NODES = {
    "LoraHypernetLoadFaceAnalyzer": (LoadFaceAnalyzer, "Load Face Analyzer (insightface)"),
    "LoraHypernetFaceEmbed": (FaceEmbed, "Face Embed"),
    "LoraHypernetMixIdentities": (MixIdentities, "Mix Identities"),
}
