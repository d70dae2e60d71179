"""Face Embed's aligned-crop mode in ComfyUI (in-process): a recognition-only model folder, the
typeface encoder's specimen sheets as the "faces", and the message when such a folder is asked
to detect."""
import importlib

import numpy as np
import pytest
import torch

from font_support import urw_font


@pytest.fixture(scope="module")
def face_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.face_nodes")


@pytest.fixture
def typeface_models(comfy, tmp_path, monkeypatch):
    import folder_paths

    from miniature.encoder_onnx import export_recognizer
    from miniature.typeface_encoder import TypefaceEncoder
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    torch.manual_seed(0)
    encoder = TypefaceEncoder().eval()
    export_recognizer(encoder, tmp_path / "insightface" / "models" / "typeface")
    return encoder


def _sheets(*fonts):
    from miniature.encoder_onnx import specimen_sheet
    from miniature.glyphs import render_glyphs
    sheets = [specimen_sheet(render_glyphs(urw_font(f), chars="AaBbEeGgHhQqRr38", size=32).numpy()) for f in fonts]
    return torch.from_numpy(np.stack(sheets)).float() / 255.0


def test_face_embed_whole_image_mode_embeds_specimen_sheets(face_nodes, typeface_models):
    assert face_nodes.WHOLE_IMAGE == importlib.import_module("hypernet.encoders.face").WHOLE_IMAGE
    (analyzer,) = face_nodes.LoadFaceAnalyzer.execute("typeface", "CPU")
    images = _sheets("C059-Roman.otf", "C059-Roman.otf")
    value, crops = face_nodes.FaceEmbed.execute(analyzer, images, False, face_nodes.WHOLE_IMAGE)
    assert crops.shape == (2, 128, 128, 3)
    torch.testing.assert_close(crops, images, atol=1 / 255, rtol=0)
    assert value.used_images == (0, 1) and value.model_name == "insightface/typeface/typeface_arcface.onnx"
    glyphs = (images[:1, ..., 0] * 255).round().reshape(1, 4, 32, 4, 32).permute(0, 1, 3, 2, 4).reshape(1, 16, 32, 32)
    with torch.no_grad():
        want = typeface_models(glyphs / 255)[0]
    torch.testing.assert_close(value.embedding, want, atol=1e-4, rtol=0)


def test_face_embed_detect_mode_on_a_recognition_only_folder_says_what_to_do(face_nodes, typeface_models, pack):
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    (analyzer,) = face_nodes.LoadFaceAnalyzer.execute("typeface", "CPU")
    with pytest.raises(errors.HypernetError, match="no face detector.*face_crop to 'whole image is the aligned crop'"):
        face_nodes.FaceEmbed.execute(analyzer, _sheets("P052-Roman.otf"), False)


def test_face_crop_input_is_optional_with_a_tooltip(face_nodes):
    schema = face_nodes.FaceEmbed.define_schema()
    face_crop = next(i for i in schema.inputs if i.id == "face_crop")
    assert face_crop.optional and face_crop.default == face_nodes.DETECT and "aligned" in face_crop.tooltip
