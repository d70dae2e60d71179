"""Faces in the graph: load an insightface model folder, embed reference photos, mix people."""
from __future__ import annotations

import os

import folder_paths
import numpy as np
import torch

from ..hypernet.errors import HypernetError
from . import comfy_glue
from .comfy_glue import CATEGORY_FACE, FaceAnalyzerType, FaceEmbeddingType, display_name, io, progress_callback
from .values import FACE_ANALYZER, FACE_EMBEDDING, FaceEmbeddingValue, expect
PROVIDERS = ["CPU", "CUDA", "ROCm", "CoreML"]
DETECT = "detect the largest face"
# The same words as hypernet.encoders.face.WHOLE_IMAGE (not imported: the pack loads hypernet lazily).
WHOLE_IMAGE = "whole image is the aligned crop"
DEFAULT_FACE_MODEL = "antelopev2"


def insightface_model_roots() -> list[str]:
    """`models/insightface/models/`, where IPAdapter-FaceID, InstantID and PuLID keep them too."""
    roots = [os.path.join(folder_paths.models_dir, "insightface", "models")]
    if "insightface" in folder_paths.folder_names_and_paths:  # extra_model_paths.yaml may add more
        roots += [os.path.join(p, "models") for p in folder_paths.get_folder_paths("insightface")]
    shipped = os.path.join(comfy_glue.shipped_models_dir("insightface"), "models")  # the typeface encoder
    if os.path.isdir(shipped):
        roots.append(shipped)
    return list(dict.fromkeys(roots))


def face_model_names() -> list[str]:
    names = set()
    for root in insightface_model_roots():
        if os.path.isdir(root):
            names.update(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    # The default leads the list even when absent: shared portrait workflows name it, and the node
    # then says where to put it instead of failing validation (the shipped typeface encoder alone
    # would otherwise replace it).
    return [DEFAULT_FACE_MODEL] + sorted(names - {DEFAULT_FACE_MODEL})


def face_model_dir(name: str) -> str:
    for root in insightface_model_roots():
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return os.path.join(insightface_model_roots()[0], name)


def images_to_uint8(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE [B,H,W,C] floats in 0..1 -> list of RGB uint8 arrays."""
    arrays = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return list(arrays)


class LoadFaceAnalyzer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetLoadFaceAnalyzer",
            display_name=display_name("Load Face Analyzer (insightface)"),
            category=CATEGORY_FACE,
            description="Loads an insightface face model folder (never downloads).",
            inputs=[
                io.Combo.Input("model_name", options=face_model_names(),
                               tooltip="insightface model folder in models/insightface/models/ (antelopev2 or "
                                       "buffalo_l). Use the one the hypernet was trained with. A folder with only a "
                                       "recognition model loads too; Face Embed then needs face_crop 'whole image "
                                       "is the aligned crop'."),
                io.Combo.Input("provider", options=PROVIDERS, default="CPU",
                               tooltip="onnxruntime device; falls back to CPU with a warning when not available."),
            ],
            outputs=[FaceAnalyzerType.Output("face_analyzer", display_name="face_analyzer",
                                             tooltip="Face detector and ArcFace recogniser, for Face Embed.")],
        )

    @classmethod
    def execute(cls, model_name: str, provider: str) -> io.NodeOutput:
        from ..hypernet.encoders.face import load_face_analyzer
        return io.NodeOutput(load_face_analyzer(face_model_dir(model_name), providers=(provider,)))


def _face_analyzer(value):
    from ..hypernet.encoders.face import FaceAnalyzer
    return expect(value, FaceAnalyzer, FACE_ANALYZER, "Face Embed's face_analyzer input", "Load Face Analyzer")


class FaceEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetFaceEmbed",
            display_name=display_name("Face Embed"),
            category=CATEGORY_FACE,
            description="Finds the largest face in each photo and embeds it with ArcFace (or embeds each whole "
                        "image as an already aligned crop); several photos average into one identity.",
            inputs=[
                FaceAnalyzerType.Input("face_analyzer", tooltip="From Load Face Analyzer."),
                io.Image.Input("images", tooltip="One or more reference photos of the same person (a batch)."),
                io.Boolean.Input("skip_photos_without_face", default=False,
                                 tooltip="Skip photos where no face is found instead of stopping with an error."),
                io.Combo.Input("face_crop", options=[DETECT, WHOLE_IMAGE], default=DETECT, optional=True,
                               tooltip="'detect the largest face': find, align and crop the face in each photo. "
                                       "'whole image is the aligned crop': no detection; each image is resized to "
                                       "the recogniser's input and embedded as it is (for faces you cropped and "
                                       "aligned yourself, or a recognition-only model folder such as the typeface "
                                       "miniature's)."),
            ],
            outputs=[
                FaceEmbeddingType.Output("face_embedding", display_name="face_embedding",
                                         tooltip="The identity: mean of the photos' ArcFace embeddings."),
                io.Image.Output("face_crops", display_name="face_crops",
                                tooltip="The aligned faces that were used (preview)."),
            ],
        )

    @classmethod
    def execute(cls, face_analyzer, images: torch.Tensor, skip_photos_without_face: bool,
                face_crop: str = DETECT) -> io.NodeOutput:
        face_analyzer = _face_analyzer(face_analyzer)
        if face_crop not in (DETECT, WHOLE_IMAGE):
            raise HypernetError(f"Face Embed's face_crop is '{face_crop}'; choose '{DETECT}' or '{WHOLE_IMAGE}'.")
        photos = images_to_uint8(images)
        result = face_analyzer.embed_images(photos, skip_missing=skip_photos_without_face,
                                            on_progress=progress_callback(len(photos)),
                                            aligned_crops=face_crop == WHOLE_IMAGE)
        crops = torch.from_numpy(np.stack([face.crop for face in result.faces])).float() / 255.0
        value = FaceEmbeddingValue(
            embedding=torch.from_numpy(result.identity).float(),
            per_image=torch.from_numpy(result.embeddings).float(),
            model_name=result.model_name,
            used_images=tuple(result.used),
            skipped_images=tuple(result.skipped),
        )
        return io.NodeOutput(value, crops)


def face_embedding(value, where: str) -> FaceEmbeddingValue:
    return expect(value, FaceEmbeddingValue, FACE_EMBEDDING, where, "Face Embed or Mix Identities")


class MixIdentities(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetMixIdentities",
            display_name=display_name("Mix Identities"),
            category=CATEGORY_FACE,
            description="Blends two people by spherical interpolation of their face embeddings.",
            inputs=[
                FaceEmbeddingType.Input("face_a", tooltip="The first person, from Face Embed."),
                FaceEmbeddingType.Input("face_b", tooltip="The second person, from Face Embed."),
                io.Float.Input("ratio", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="0 gives face A, 1 gives face B; in between walks the sphere of identities "
                                       "from A to B."),
            ],
            outputs=[FaceEmbeddingType.Output("face_embedding", display_name="face_embedding",
                                              tooltip="The blended identity, for Sample LoRA.")],
        )

    @classmethod
    def execute(cls, face_a: FaceEmbeddingValue, face_b: FaceEmbeddingValue, ratio: float) -> io.NodeOutput:
        from ..hypernet.encoders.face import slerp
        face_a = face_embedding(face_a, "Mix Identities' face_a input")
        face_b = face_embedding(face_b, "Mix Identities' face_b input")
        if face_a.model_name != face_b.model_name:
            raise HypernetError(f"Mix Identities needs two embeddings from the same face model, got "
                                f"'{face_a.model_name}' and '{face_b.model_name}'.")
        mixed = torch.from_numpy(slerp(face_a.embedding.numpy(), face_b.embedding.numpy(), ratio)).float()
        return io.NodeOutput(FaceEmbeddingValue(mixed, torch.cat([face_a.per_image, face_b.per_image]), face_a.model_name))


NODES = [LoadFaceAnalyzer, FaceEmbed, MixIdentities]
