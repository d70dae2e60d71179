"""The hypernet in the graph: load a checkpoint, sample a LoRA latent for a face, decode it."""
from __future__ import annotations

import os

import comfy.model_management
import comfy.model_patcher
import folder_paths

from ..hypernet.errors import HypernetError
from ..hypernet.pipeline.sampling import DEFAULT_ETA, DEFAULT_GUIDANCE, DEFAULT_STEPS
from . import comfy_glue
from .comfy_glue import (CATEGORY_HYPERNET, FaceEmbeddingType, GlobalFeaturesType, HypernetType, LoraLatentType,
                         LoraType, display_name, io, progress_callback)
from .face_nodes import face_embedding as _face_embedding
from .values import (GLOBAL_FEATURES, HYPERNET, LORA_LATENT, FaceEmbeddingValue, GlobalFeaturesValue, HypernetValue,
                     LoraLatentValue, LoraValue, expect)

FOLDER = "lora_hypernets"


def register_model_folder() -> None:
    """models/lora_hypernets/ (not `hypernetworks`, which ComfyUI uses for an older format)."""
    comfy_glue.register_model_folder(FOLDER)


def _file_state(path: str) -> str:
    stat = os.stat(path)
    return f"{stat.st_mtime_ns}:{stat.st_size}"


def _hypernet(value, where: str) -> HypernetValue:
    return expect(value, HypernetValue, HYPERNET, where, "Load Hypernet")


class LoadHypernet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetLoad",
            display_name=display_name("Load Hypernet"),
            category=CATEGORY_HYPERNET,
            description="Loads a LoRA hypernetwork checkpoint (.safetensors only; nothing is unpickled).",
            inputs=[io.Combo.Input("hypernet_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A hypernet checkpoint in models/lora_hypernets/.")],
            outputs=[
                HypernetType.Output("hypernet", display_name="hypernet",
                                    tooltip="The hypernetwork, for Sample LoRA and Decode LoRA."),
                io.String.Output("info", display_name="info",
                                 tooltip="What it was trained for: base model, layout, face model."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, hypernet_name):
        """A file replaced under the same name loads again (ComfyUI's IS_CHANGED)."""
        path = folder_paths.get_full_path(FOLDER, hypernet_name)
        return _file_state(path) if path else hypernet_name

    @classmethod
    def execute(cls, hypernet_name: str) -> io.NodeOutput:
        from ..hypernet.common.files import sha256_file
        from ..hypernet.model.checkpoint import load_hypernet
        path = folder_paths.get_full_path(FOLDER, hypernet_name)
        if path is None:
            raise HypernetError(f"Hypernet '{hypernet_name}' not found; put hypernet checkpoints in "
                                f"{folder_paths.get_folder_paths(FOLDER)[0]}")
        model = load_hypernet(path, device="cpu")
        # A ModelPatcher lets ComfyUI move it to its device when needed and free it like its own models.
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        return io.NodeOutput(HypernetValue(patcher, hypernet_name, sha256_file(path)), model.describe())


class SampleLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetSample",
            display_name=display_name("Sample LoRA"),
            category=CATEGORY_HYPERNET,
            description="Samples LoRA weights (as a latent) for this face from the diffusion hypernetwork.",
            inputs=[
                HypernetType.Input("hypernet", tooltip="From Load Hypernet."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Same seed, same inputs: the same LoRA, bit for bit, on the same device type."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=1000, tooltip="DDIM steps of the prior; 25 is plenty."),
                io.Float.Input("guidance", default=DEFAULT_GUIDANCE, min=0.0, max=10.0, step=0.05,
                               tooltip="Identity strength: 1 samples the conditional prior, higher follows the face "
                                       "more, 0 ignores it. A hypernet trained with --config auto chose its own on "
                                       "validation faces: Load Hypernet's info names it."),
                io.Float.Input("eta", default=DEFAULT_ETA, min=0.0, max=1.0, step=0.01,
                               tooltip="0 is deterministic DDIM; higher adds fresh noise per step (more variety)."),
                # Optional links, not widgets: saved face-only workflows keep their widget order.
                FaceEmbeddingType.Input("face_embedding", optional=True,
                                        tooltip="From Face Embed; needed unless the hypernet reads only global image "
                                                "features (Load Hypernet's info says which)."),
                GlobalFeaturesType.Input("global_features", optional=True,
                                         tooltip="From Encode Global Image Features; needed when the hypernet is "
                                                 "conditioned on global image features."),
            ],
            outputs=[LoraLatentType.Output("lora_latent", display_name="lora_latent",
                                           tooltip="The sampled LoRA as a latent of the hypernet, for Decode LoRA.")],
        )

    # face_embedding keeps its place (it was required before global features existed), so
    # positional callers still work; ComfyUI passes everything by name.
    @classmethod
    def execute(cls, hypernet: HypernetValue, face_embedding: FaceEmbeddingValue | None = None, seed: int = 0,
                steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, eta: float = DEFAULT_ETA,
                global_features: GlobalFeaturesValue | None = None) -> io.NodeOutput:
        from ..hypernet.pipeline.sampling import sample_latents
        hypernet = _hypernet(hypernet, "Sample LoRA's hypernet input")
        if face_embedding is not None:
            face_embedding = _face_embedding(face_embedding, "Sample LoRA's face_embedding input")
        if global_features is not None:
            global_features = expect(global_features, GlobalFeaturesValue, GLOBAL_FEATURES,
                                     "Sample LoRA's global_features input", "Encode Global Image Features")
        model = hypernet.hypernet
        _check_condition_inputs(hypernet, face_embedding, global_features)
        comfy.model_management.load_models_gpu([hypernet.patcher])
        latent = sample_latents(model, face_embedding.embedding if face_embedding is not None else None,
                                global_features=global_features.features if global_features is not None else None,
                                seed=seed, steps=steps, guidance=guidance, eta=eta,
                                callback=progress_callback(steps), device=hypernet.patcher.load_device)
        # Provenance names what made the condition; face-only keeps its face model name alone.
        made_by = [v for v in (face_embedding and face_embedding.model_name,
                               global_features and global_features.encoder["name"]) if v]
        return io.NodeOutput(LoraLatentValue(latent.cpu(), seed, steps, guidance, eta, hypernet.name, hypernet.sha256,
                                             " + ".join(made_by)))


def _check_condition_inputs(hypernet: HypernetValue, face: FaceEmbeddingValue | None,
                            global_features: GlobalFeaturesValue | None) -> None:
    """Name the socket to connect or disconnect when the wiring does not fit the hypernet's
    condition, and refuse features from another face model or image encoder."""
    from ..hypernet.encoders.encoder_info import check_encoder
    from ..hypernet.pipeline.condition_inputs import InputWords, check_condition_inputs
    model = hypernet.hypernet
    encoder = model.config.global_encoder
    check_condition_inputs(model.config, face is not None, global_features is not None, InputWords(
        who=f"Hypernet '{hypernet.name}'",
        give_face="connect a Face Embed output to Sample LoRA's face_embedding input",
        give_global="connect Encode Global Image Features (from Load CLIP Vision) to Sample LoRA's global_features "
                    "input",
        drop_face="disconnect Sample LoRA's face_embedding input",
        drop_global="disconnect Sample LoRA's global_features input (or load a hypernet trained with them)",
        face_missing="face_embedding is not connected", global_missing="global_features is not connected",
        face_unused="face_embedding is connected", global_unused="global_features is connected"))
    if face is not None and face.model_name != model.embedding_model:
        raise HypernetError(
            f"This hypernet was trained on face embeddings from '{model.embedding_model}', but Face Embed used "
            f"'{face.model_name}'. Load that face model in Load Face Analyzer.")
    if global_features is not None:
        actual = dict(global_features.encoder)
        if encoder["name"] in global_features.architectures:  # ComfyUI's model has no name of its own
            actual["name"] = encoder["name"]
        check_encoder(encoder, actual)


class DecodeLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetDecode",
            display_name=display_name("Decode LoRA"),
            category=CATEGORY_HYPERNET,
            description="Decodes a sampled latent into LoRA weights (kohya format).",
            inputs=[
                HypernetType.Input("hypernet", tooltip="The same Load Hypernet that Sample LoRA used."),
                LoraLatentType.Input("lora_latent", tooltip="From Sample LoRA."),
            ],
            outputs=[LoraType.Output("lora", display_name="lora", tooltip="A ready LoRA, for Apply LoRA and Save LoRA.")],
        )

    @classmethod
    def execute(cls, hypernet: HypernetValue, lora_latent: LoraLatentValue) -> io.NodeOutput:
        from ..hypernet.lora.lora_io import lora_metadata, lora_to_state_dict
        from ..hypernet.pipeline.sampling import decode_lora, provenance
        hypernet = _hypernet(hypernet, "Decode LoRA's hypernet input")
        lora_latent = expect(lora_latent, LoraLatentValue, LORA_LATENT, "Decode LoRA's lora_latent input", "Sample LoRA")
        if lora_latent.hypernet_sha256 != hypernet.sha256:
            raise HypernetError(f"This latent was sampled with hypernet '{lora_latent.hypernet_name}', not "
                                f"'{hypernet.name}': connect the same Load Hypernet to Sample LoRA and Decode LoRA.")
        model = hypernet.hypernet
        comfy.model_management.load_models_gpu([hypernet.patcher])
        weights = decode_lora(model, lora_latent.latent.to(hypernet.patcher.load_device))
        metadata = lora_metadata(weights, model.layout.base_model, provenance(
            hypernet.name, hypernet.sha256, lora_latent.seed, lora_latent.steps, lora_latent.guidance, lora_latent.eta,
            lora_latent.embedding_model))
        state = {k: v.detach().cpu().contiguous() for k, v in lora_to_state_dict(weights).items()}
        return io.NodeOutput(LoraValue(state, model.layout, metadata))


NODES = [LoadHypernet, SampleLoRA, DecodeLoRA]
