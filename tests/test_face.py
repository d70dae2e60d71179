"""Face embedding through insightface's real routing and decoding, on generated ONNX models."""
import logging
from pathlib import Path

import insightface
import numpy as np
import pytest
from face_models import draw_face, synthetic_photo
from face_support import models  # noqa: F401  (fixture)
from insightface.model_zoo import model_zoo
from PIL import Image

from hypernet.common.images import read_image
from hypernet.common.tensors import mean_embedding
from hypernet.encoders import face
from hypernet.errors import HypernetError

PHOTOS = Path(insightface.__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def analyzer(models):
    return face.load_face_analyzer(models["folder"])


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_generated_models_are_routed_like_real_ones(models):
    detector = model_zoo.get_model(str(models["detector"]), providers=["CPUExecutionProvider"])
    recognizer = model_zoo.get_model(str(models["recognizer"]), providers=["CPUExecutionProvider"])
    assert detector.taskname == "detection" and detector.use_kps
    assert recognizer.taskname == "recognition"
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert tuple(recognizer.input_size) == (112, 112)


def test_single_face_gives_its_box_landmarks_crop_and_unit_embedding(analyzer):
    result = analyzer.detect(synthetic_photo(400, 500, [(120, 90, 80, 1)]))
    np.testing.assert_allclose(result.bbox, [120, 90, 200, 170], atol=2)
    assert result.num_faces == 1 and result.det_score >= 0.5 and not result.padded
    # Eyes above the mouth corners, left eye left of the right one, all inside the box.
    assert result.kps[0, 0] < result.kps[1, 0] and result.kps[0, 1] < result.kps[3, 1]
    assert np.all((result.kps >= [120, 90]) & (result.kps <= [200, 170]))
    assert result.crop.shape == (112, 112, 3) and result.crop.dtype == np.uint8
    assert result.crop[..., 1].mean() > 200  # the recogniser saw the (green) face, RGB order
    assert result.embedding.shape == (512,) and result.embedding.dtype == np.float32
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)


def test_embedding_follows_identity_not_size_or_place(analyzer):
    small = analyzer.detect(synthetic_photo(400, 500, [(40, 50, 60, 1)], seed=1)).embedding
    large = analyzer.detect(synthetic_photo(400, 500, [(200, 120, 180, 1)], seed=2)).embedding
    other = analyzer.detect(synthetic_photo(400, 500, [(200, 120, 180, 2)], seed=2)).embedding
    assert cosine(small, large) > 0.9
    assert abs(cosine(large, other)) < 0.5


def test_largest_of_several_faces_is_picked(analyzer):
    photo = synthetic_photo(400, 500, [(40, 40, 50, 3), (280, 180, 160, 4)])
    result = analyzer.detect(photo)
    assert result.num_faces == 2
    np.testing.assert_allclose(result.bbox, [280, 180, 440, 340], atol=2)
    alone = analyzer.detect(synthetic_photo(400, 500, [(280, 180, 160, 4)])).embedding
    assert cosine(result.embedding, alone) > 0.99


def test_tightly_cropped_face_is_found_only_after_padding(analyzer, models):
    photo = synthetic_photo(240, 240, [(0, 30, 190, 5)])  # touches the left border
    detector = model_zoo.get_model(str(models["detector"]), providers=["CPUExecutionProvider"])
    bgr = np.ascontiguousarray(photo[..., ::-1])
    for size in face.DETECTION_SIZES:
        assert len(detector.detect(bgr, input_size=(size, size))[0]) == 0
    result = analyzer.detect(photo)
    assert result.padded
    np.testing.assert_allclose(result.bbox, [0, 30, 190, 220], atol=2)  # in the photo's pixels


def test_real_photo_without_marker_has_no_face_and_with_marker_has_one(analyzer):
    photo = read_image(PHOTOS / "t1.jpg")
    assert analyzer.detect(photo) is None
    marked = draw_face(photo.copy(), 600, 300, 120, identity=7)
    np.testing.assert_allclose(analyzer.detect(marked).bbox, [600, 300, 720, 420], atol=2)


def test_missing_face_error_names_the_image(analyzer):
    photos = [synthetic_photo(300, 300, [(100, 100, 80, 1)]),
              synthetic_photo(300, 300),
              synthetic_photo(300, 300, [(100, 100, 80, 1)])]
    with pytest.raises(HypernetError) as error:
        analyzer.embed_images(photos)
    assert str(error.value).startswith(
        "No face detected in reference image 2 of 3 (tried detection sizes 640, 512, 384, 256 "
        "and padding). Use a photo where the face is clearly visible, or turn on 'skip photos without face'.")


def test_skip_missing_skips_and_reports(analyzer, caplog):
    photos = [synthetic_photo(300, 300, [(50, 60, 90, 1)]),
              synthetic_photo(300, 300),
              synthetic_photo(300, 300, [(120, 100, 120, 2)])]
    progress = []
    with caplog.at_level(logging.WARNING, logger="hypernet.encoders.face"):
        result = analyzer.embed_images(photos, skip_missing=True,
                                       on_progress=lambda done, total: progress.append((done, total)))
    assert result.used == [0, 2] and result.skipped == [1]
    assert result.embeddings.shape == (2, 512) and len(result.faces) == 2
    assert "reference image 2 of 3" in caplog.text
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert result.model_name == analyzer.name

    with pytest.raises(HypernetError, match="No face detected in any of the 2 reference images"):
        analyzer.embed_images([synthetic_photo(300, 300), synthetic_photo(200, 200)],
                              skip_missing=True)


def test_several_photos_combine_into_normalised_mean(analyzer):
    photos = [synthetic_photo(300, 300, [(50, 60, 90, 1)]),
              synthetic_photo(300, 300, [(120, 100, 120, 2)])]
    result = analyzer.embed_images(photos)
    first, second = result.embeddings
    expected = (first + second) / np.linalg.norm(first + second)
    np.testing.assert_allclose(result.identity, expected, atol=1e-6)
    # The mean lies between the two: nearer each photo than they are to each other.
    assert cosine(result.identity, first) > cosine(first, second)
    assert cosine(result.identity, second) > cosine(first, second)


def test_float_and_grey_images_are_accepted_and_bad_shapes_named(analyzer):
    photo = synthetic_photo(300, 300, [(50, 60, 90, 1)])
    as_float = analyzer.detect(photo.astype(np.float32) / 255.0).embedding
    np.testing.assert_allclose(as_float, analyzer.detect(photo).embedding, atol=1e-6)
    assert analyzer.detect(photo.mean(axis=2).astype(np.uint8)) is None  # no colour, no face
    with pytest.raises(HypernetError, match="Reference image 1 of 1 has shape \\(3, 300, 300\\)"):
        analyzer.embed_images([photo.transpose(2, 0, 1)])


def test_embed_file_reads_exif_rotated_photos(models, tmp_path):
    embedder = face.ArcFaceEmbedder(models["folder"])
    assert embedder.name == "insightface/buffalo_l/w600k_r50.onnx"
    photo = synthetic_photo(300, 400, [(60, 40, 100, 6)])
    expected = embedder.analyzer.detect(photo).embedding
    # Stored turned a quarter turn with EXIF orientation 6 ("rotate 90 clockwise to view").
    stored = Image.fromarray(np.rot90(photo, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_allclose(embedder.embed_file(tmp_path / "rotated.png"), expected, atol=1e-5)


def test_embed_file_errors_name_the_file(models, tmp_path):
    embedder = face.ArcFaceEmbedder(models["folder"])
    broken = tmp_path / "photo.jpg"
    broken.write_text("not an image")
    with pytest.raises(HypernetError, match="Cannot read image .*photo.jpg"):
        embedder.embed_file(broken)
    with pytest.raises(HypernetError, match="Cannot read image .*missing.png"):
        embedder.embed_file(tmp_path / "missing.png")
    Image.fromarray(synthetic_photo(200, 200)).save(tmp_path / "empty.png")
    with pytest.raises(HypernetError, match="No face detected in .*empty.png"):
        embedder.embed_file(tmp_path / "empty.png")


def test_mean_embedding_normalises_rows_first():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 512))
    combined = mean_embedding(np.stack([10 * a, b])).numpy()
    unit_a, unit_b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    np.testing.assert_allclose(combined, (unit_a + unit_b) / np.linalg.norm(unit_a + unit_b),
                               atol=1e-6)
    with pytest.raises(HypernetError, match="cancel out"):
        mean_embedding(np.stack([a, -a]))


def test_slerp_endpoints_norm_symmetry_and_constant_speed():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 512))
    unit_a, unit_b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    np.testing.assert_allclose(face.slerp(a, b, 0.0), unit_a, atol=1e-6)
    np.testing.assert_allclose(face.slerp(a, b, 1.0), unit_b, atol=1e-6)
    np.testing.assert_allclose(face.slerp(a, b, 0.5), face.slerp(b, a, 0.5), atol=1e-6)
    total = np.arccos(unit_a @ unit_b)
    for t in (0.1, 0.3, 0.5, 0.9):
        point = face.slerp(a, b, t)
        assert np.linalg.norm(point) == pytest.approx(1.0, abs=1e-6)
        assert np.arccos(np.clip(unit_a @ point, -1, 1)) == pytest.approx(t * total, abs=1e-4)


def test_slerp_of_equal_and_opposite_vectors():
    a = np.random.default_rng(2).standard_normal(512)
    unit_a = a / np.linalg.norm(a)
    np.testing.assert_allclose(face.slerp(a, 3 * a, 0.7), unit_a, atol=1e-6)
    middle = face.slerp(a, -a, 0.5)
    assert np.linalg.norm(middle) == pytest.approx(1.0, abs=1e-6)
    assert abs(middle @ unit_a) < 1e-6  # a quarter turn from both ends
    np.testing.assert_allclose(middle, face.slerp(-a, a, 0.5), atol=1e-6)
    np.testing.assert_allclose(face.slerp(a, -a, 1.0), -unit_a, atol=1e-6)
