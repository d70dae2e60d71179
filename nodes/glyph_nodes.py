"""The typeface miniature's base model in the graph: load a glyph model (MODEL, VAE and its
character tables) and turn characters into CONDITIONING for the stock KSampler."""
from __future__ import annotations

import os

import folder_paths

from ..miniature.base_model import GlyphModelError
from . import comfy_glue
from .comfy_glue import CATEGORY_MINIATURE, GlyphTextType, display_name, io
from .values import GLYPH_TEXT, GlyphTextValue, expect

FOLDER = "glyph_models"


def register_model_folder() -> None:
    """models/glyph_models/: the miniature's base models (.safetensors)."""
    comfy_glue.register_model_folder(FOLDER)


class LoadGlyphModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetLoadGlyphModel",
            display_name=display_name("Load Glyph Model"),
            category=CATEGORY_MINIATURE,
            description="Loads the typeface miniature's base model: a small SDXL-architecture UNet that draws one "
                        "glyph per character, the pixel-fold VAE for VAE Decode, and its character tables for "
                        "Glyph Prompt (.safetensors only; nothing is unpickled).",
            inputs=[io.Combo.Input("glyph_model_name", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A glyph model in models/glyph_models/ (written by "
                                           "`python -m miniature.train_base`).")],
            outputs=[
                io.Model.Output("model", display_name="MODEL",
                                tooltip="An SDXL-family MODEL: KSampler and Apply LoRA take it like any SDXL checkpoint."),
                io.Vae.Output("vae", display_name="VAE",
                              tooltip="The lossless pixel fold: VAE Decode turns its latents into glyph images, "
                                      "VAE Encode glyph images into latents."),
                GlyphTextType.Output("glyph_text", display_name="glyph text",
                                     tooltip="The characters this model draws, for Glyph Prompt (its CLIP)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, glyph_model_name):
        path = folder_paths.get_full_path(FOLDER, glyph_model_name)
        if not path:
            return glyph_model_name
        stat = os.stat(path)
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, glyph_model_name: str) -> io.NodeOutput:
        from ..miniature.comfy_glyph import FoldVAE, glyph_model_patcher
        from ..miniature.glyph_model_file import load_glyph_model
        path = folder_paths.get_full_path(FOLDER, glyph_model_name)
        if path is None:
            raise GlyphModelError(f"Glyph model '{glyph_model_name}' not found; put glyph models in "
                                  f"{folder_paths.get_folder_paths(FOLDER)[0]}")
        glyph = load_glyph_model(path)
        patcher = glyph_model_patcher(glyph, glyph_model_name)
        return io.NodeOutput(patcher, FoldVAE(glyph.fold()), GlyphTextValue(glyph.text, glyph.glyph_size, glyph_model_name))


class GlyphPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetGlyphPrompt",
            display_name=display_name("Glyph Prompt"),
            category=CATEGORY_MINIATURE,
            description="One glyph per character, as one batch: positive and negative CONDITIONING and the empty "
                        "LATENT for a KSampler, so one sampler call draws the whole row.",
            inputs=[
                GlyphTextType.Input("glyph_text", tooltip="From Load Glyph Model."),
                io.String.Input("characters", default="Hamburgefonstiv",
                                tooltip="The characters to draw, one glyph each (those the model was trained on, "
                                        "A-Z a-z 0-9 by default)."),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip="One character per batch item."),
                io.Conditioning.Output("negative", display_name="negative",
                                       tooltip="The empty prompt (any glyph), for classifier-free guidance (cfg > 1)."),
                io.Latent.Output("latent", display_name="LATENT",
                                 tooltip="Empty latents of the glyph size, one per character, for the KSampler."),
            ],
        )

    @classmethod
    def execute(cls, glyph_text: GlyphTextValue, characters: str) -> io.NodeOutput:
        from ..miniature.comfy_glyph import empty_glyph_latent, glyph_conditioning
        glyph_text = expect(glyph_text, GlyphTextValue, GLYPH_TEXT, "Glyph Prompt's glyph_text input", "Load Glyph Model")
        positive, negative = glyph_conditioning(glyph_text.text, characters)
        return io.NodeOutput(positive, negative, empty_glyph_latent(len(characters), glyph_text.glyph_size))


class GlyphSheet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraHypernetGlyphSheet",
            display_name=display_name("Glyph Sheet"),
            category=CATEGORY_MINIATURE,
            description="Lays out a batch of glyph images as one picture, enlarged without smoothing, so a row of "
                        "16 px glyphs can be judged and saved as one image.",
            inputs=[
                io.Image.Input("images", tooltip="The glyphs, e.g. from VAE Decode after a Glyph Prompt KSampler."),
                io.Int.Input("columns", default=0, min=0, max=256,
                             tooltip="Glyphs per row; 0 puts them all in one row."),
                io.Int.Input("scale", default=4, min=1, max=16,
                             tooltip="Enlargement by repeating pixels (4: 16 px glyphs become 64 px)."),
            ],
            outputs=[io.Image.Output("image", display_name="IMAGE", tooltip="One picture of all the glyphs.")],
        )

    @classmethod
    def execute(cls, images, columns: int, scale: int) -> io.NodeOutput:
        from ..miniature.glyph_sampling import glyph_sheet
        return io.NodeOutput(glyph_sheet(images, columns, scale))


NODES = [LoadGlyphModel, GlyphPrompt, GlyphSheet]
