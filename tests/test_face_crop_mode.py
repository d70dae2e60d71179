"""Aligned-crop mode of the face path: no detection, the whole image is the face crop.

Real onnxruntime sessions through insightface's own recogniser class: the generated ArcFace-
shaped model (face_models.py) and the typeface encoder exported as a recognition model."""
import numpy as np
import pytest
import torch
from face_models import synthetic_photo, write_face_models
from PIL import Image

from hypernet.encoders import face
from hypernet.errors import HypernetError
from miniature.encoder_onnx import export_recognizer, specimen_sheet
from miniature.glyphs import render_glyphs
from miniature.typeface_encoder import TypefaceEncoder
from face_support import models  # noqa: F401  (fixture)
from font_support import urw_font


@pytest.fixture(scope="module")
def recognizer_only(tmp_path_factory):
    paths = write_face_models(tmp_path_factory.mktemp("insightface") / "aligned_only")
    paths["detector"].unlink()
    return paths["folder"]


@pytest.fixture(scope="module")
def typeface_folder(tmp_path_factory):
    torch.manual_seed(0)
    encoder = TypefaceEncoder().eval()
    folder = tmp_path_factory.mktemp("insightface") / "typeface"
    export_recognizer(encoder, folder)
    return folder, encoder


def test_a_folder_with_only_a_recogniser_loads_and_refuses_to_detect(recognizer_only):
    analyzer = face.FaceAnalyzer(recognizer_only)
    assert not analyzer.can_detect and analyzer.detector_file is None
    photo = synthetic_photo(200, 200, [(50, 50, 100, 1)])
    with pytest.raises(HypernetError) as error:
        analyzer.detect(photo)
    message = str(error.value)
    assert "no face detector" in message and face.WHOLE_IMAGE in message and "\n" not in message
    with pytest.raises(HypernetError, match="no face detector"):
        analyzer.embed_images([photo])


def test_whole_image_is_resized_to_the_recogniser_input_and_embedded(recognizer_only):
    analyzer = face.FaceAnalyzer(recognizer_only)
    crop = synthetic_photo(112, 112, [(0, 0, 112, 4)], seed=3)
    exact = analyzer.embed_crop(crop)
    assert exact.aligned_input and exact.crop.shape == (112, 112, 3)
    np.testing.assert_array_equal(exact.crop, crop)
    assert abs(np.linalg.norm(exact.embedding) - 1) < 1e-5
    # The same crop at twice the size is resized back and gives (nearly) the same embedding.
    bigger = np.asarray(Image.fromarray(crop).resize((224, 224), Image.Resampling.NEAREST))
    assert float(analyzer.embed_crop(bigger).embedding @ exact.embedding) > 0.99
    other = analyzer.embed_crop(synthetic_photo(112, 112, [(0, 0, 112, 9)], seed=3))
    assert float(other.embedding @ exact.embedding) < 0.95


def test_crop_mode_embeds_every_image_even_without_a_face(models):
    analyzer = face.FaceAnalyzer(models["folder"])   # with a detector: crop mode does not use it
    blank = synthetic_photo(120, 160, [], seed=5)
    result = analyzer.embed_images([blank, synthetic_photo(112, 112, [(0, 0, 112, 2)])], aligned_crops=True)
    assert result.used == [0, 1] and result.skipped == []
    expected = result.embeddings.mean(0)
    np.testing.assert_allclose(result.identity, expected / np.linalg.norm(expected), atol=1e-6)
    with pytest.raises(HypernetError, match="No face detected"):
        analyzer.embed_images([blank])


def test_typeface_encoder_as_the_recogniser_matches_torch(typeface_folder):
    folder, encoder = typeface_folder
    analyzer = face.FaceAnalyzer(folder)
    assert analyzer.name == "insightface/typeface/typeface_arcface.onnx" and not analyzer.can_detect
    glyphs = render_glyphs(urw_font("C059-Roman.otf"), chars="AaBbGgQqRr0123", size=32)
    sheet = specimen_sheet(glyphs.numpy())
    got = analyzer.embed_crop(sheet).embedding
    with torch.no_grad():
        want = encoder(glyphs[None].float() / 255)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_arcface_embedder_in_crop_mode_reads_files(typeface_folder, tmp_path):
    folder, _ = typeface_folder
    glyphs = render_glyphs(urw_font("NimbusSans-Regular.otf"), chars="Hamburgefonts", size=32).numpy()
    Image.fromarray(specimen_sheet(glyphs)).save(tmp_path / "sheet.png")
    embedder = face.ArcFaceEmbedder(folder, aligned_crops=True)
    from_file = embedder.embed_file(tmp_path / "sheet.png")
    np.testing.assert_allclose(from_file, embedder.embed_image(specimen_sheet(glyphs)), atol=1e-6)
