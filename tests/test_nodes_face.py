"""Face nodes in-process: Load Face Analyzer, Face Embed (errors, skip, preview), Mix Identities."""
import importlib

import numpy as np
import pytest
import torch

from face_models import synthetic_photo, write_face_models


@pytest.fixture(scope="module")
def face_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.face_nodes")


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{pack.__name__}.hypernet.errors")


@pytest.fixture
def models_root(comfy, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    return tmp_path / "insightface" / "models"


def as_image(*photos) -> torch.Tensor:
    return torch.from_numpy(np.stack(photos)).float() / 255.0


def test_model_list_leads_with_the_default_and_adds_found_folders(face_nodes, models_root):
    names = face_nodes.face_model_names()
    assert names[0] == "antelopev2" and not (models_root / "antelopev2").exists()
    assert "typeface" in names  # the pack's shipped encoder, found beside ComfyUI's folder
    write_face_models(models_root / "buffalo_l")
    assert face_nodes.face_model_names() == ["antelopev2", "buffalo_l", "typeface"]


def test_missing_model_folder_error_says_where_to_put_files(face_nodes, errors, models_root):
    with pytest.raises(errors.HypernetError, match=r"antelopev2.*insightface[/\\]models[/\\]antelopev2"):
        face_nodes.LoadFaceAnalyzer.execute("antelopev2", "CPU")


def test_face_embed_combines_photos_and_previews_crops(face_nodes, models_root):
    write_face_models(models_root / "antelopev2")
    (analyzer,) = face_nodes.LoadFaceAnalyzer.execute("antelopev2", "CPU")
    photos = as_image(synthetic_photo(256, 256, [(60, 60, 100, 3)], seed=1),
                      synthetic_photo(256, 256, [(30, 80, 140, 3)], seed=2))
    value, crops = face_nodes.FaceEmbed.execute(analyzer, photos, False)
    assert crops.shape == (2, 112, 112, 3) and 0 <= crops.min() and crops.max() <= 1
    assert value.per_image.shape == (2, 512) and value.used_images == (0, 1)
    expected = value.per_image.mean(0)
    torch.testing.assert_close(value.embedding, expected / expected.norm(), atol=1e-6, rtol=0)
    assert value.model_name == analyzer.name


def test_face_embed_names_the_photo_without_face_or_skips_it(face_nodes, errors, models_root):
    write_face_models(models_root / "antelopev2")
    (analyzer,) = face_nodes.LoadFaceAnalyzer.execute("antelopev2", "CPU")
    photos = as_image(synthetic_photo(256, 256, [(60, 60, 100, 3)], seed=1), synthetic_photo(256, 256, [], seed=2),
                      synthetic_photo(256, 256, [(40, 40, 120, 3)], seed=3))
    with pytest.raises(errors.HypernetError, match="No face detected in reference image 2 of 3"):
        face_nodes.FaceEmbed.execute(analyzer, photos, False)
    value, crops = face_nodes.FaceEmbed.execute(analyzer, photos, True)
    assert value.used_images == (0, 2) and value.skipped_images == (1,) and crops.shape[0] == 2


def test_mix_identities_walks_from_a_to_b(face_nodes, models_root):
    write_face_models(models_root / "antelopev2")
    (analyzer,) = face_nodes.LoadFaceAnalyzer.execute("antelopev2", "CPU")
    a, _ = face_nodes.FaceEmbed.execute(analyzer, as_image(synthetic_photo(256, 256, [(60, 60, 100, 1)])), False)
    b, _ = face_nodes.FaceEmbed.execute(analyzer, as_image(synthetic_photo(256, 256, [(60, 60, 100, 2)])), False)
    mix = face_nodes.MixIdentities
    torch.testing.assert_close(mix.execute(a, b, 0.0)[0].embedding, a.embedding)
    torch.testing.assert_close(mix.execute(a, b, 1.0)[0].embedding, b.embedding, atol=1e-6, rtol=0)
    half = mix.execute(a, b, 0.5)[0].embedding
    assert half.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.dot(half, a.embedding).item() == pytest.approx(torch.dot(half, b.embedding).item(), abs=1e-5)
