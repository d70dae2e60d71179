"""Loading face model folders: missing and misnamed files, onnxruntime providers, the analyzer cache."""
import gc
import logging
import os
import weakref

import onnxruntime
import pytest
from face_models import write_face_models
from face_support import models  # noqa: F401  (fixture)

from hypernet.encoders import face, onnx_providers
from hypernet.errors import HypernetError


def test_missing_folder_names_path_and_files(tmp_path):
    folder = tmp_path / "antelopev2"
    with pytest.raises(HypernetError) as error:
        face.load_face_analyzer(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message


def test_pack_unpacked_one_folder_too_deep_is_explained(tmp_path, models):
    folder = tmp_path / "antelopev2"
    write_face_models(folder / "antelopev2")
    with pytest.raises(HypernetError, match="one folder too deep"):
        face.FaceAnalyzer(folder)


def test_folder_without_recogniser_lists_what_it_found(tmp_path):
    folder = tmp_path / "buffalo_l"
    paths = write_face_models(folder)
    paths["recognizer"].unlink()
    with pytest.raises(HypernetError) as error:
        face.FaceAnalyzer(folder)
    assert "No face recogniser" in str(error.value) and "det_10g.onnx" in str(error.value)
    assert "w600k_r50.onnx" in str(error.value)


def test_other_file_names_are_routed_and_unused_pack_files_not_loaded(tmp_path):
    folder = tmp_path / "my_pack"
    write_face_models(folder, detector_file="face_detector.onnx", recognizer_file="arcface.onnx")
    (folder / "genderage.onnx").write_bytes(b"not an onnx model")  # would fail to load
    analyzer = face.FaceAnalyzer(folder)
    assert analyzer.detector_file.name == "face_detector.onnx"
    assert analyzer.name == "insightface/my_pack/arcface.onnx"


def test_broken_model_file_is_named(tmp_path):
    folder = tmp_path / "buffalo_l"
    paths = write_face_models(folder)
    paths["detector"].write_bytes(b"truncated download")
    with pytest.raises(HypernetError, match="Could not load .*det_10g.onnx"):
        face.FaceAnalyzer(folder)


def test_unavailable_provider_falls_back_to_cpu_with_warning(models, monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="hypernet.encoders"):
        analyzer = face.FaceAnalyzer(models["folder"], providers=("CUDA",))
    assert analyzer.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text


def test_cuda_request_runs_on_cuda_or_warns(models, caplog):
    """This machine's onnxruntime may list CUDA yet fail to start it (no GPU or libraries)."""
    with caplog.at_level(logging.WARNING, logger="hypernet.encoders"):
        analyzer = face.FaceAnalyzer(models["folder"], providers=("CUDA",))
    if "CUDAExecutionProvider" in analyzer.providers:
        assert "CUDAExecutionProvider" not in caplog.text
    else:
        assert analyzer.providers == ["CPUExecutionProvider"]
        assert "CUDAExecutionProvider" in caplog.text and "CPU" in caplog.text


def test_unknown_provider_name_is_an_error():
    with pytest.raises(HypernetError, match="Unknown onnxruntime provider 'Quantum'"):
        onnx_providers.resolve_providers(["Quantum"])
    assert onnx_providers.provider_name("ROCm") == "ROCMExecutionProvider"
    assert onnx_providers.provider_name("coreml") == "CoreMLExecutionProvider"


def test_two_onnxruntime_distributions_warn_once(models, monkeypatch, caplog):
    class Distribution:
        def __init__(self, name):
            self.metadata = {"Name": name}

    fake = [Distribution("onnxruntime"), Distribution("onnxruntime_gpu"), Distribution("numpy")]
    monkeypatch.setattr(onnx_providers.metadata, "distributions", lambda: iter(fake))
    monkeypatch.setattr(onnx_providers, "_runtime_conflict_checked", False)
    with caplog.at_level(logging.WARNING, logger="hypernet.encoders"):
        face.FaceAnalyzer(models["folder"])
        face.FaceAnalyzer(models["folder"])
    assert caplog.text.count("Several onnxruntime distributions are installed") == 1
    assert "onnxruntime, onnxruntime-gpu" in caplog.text


def test_cache_reuses_analyzer_until_a_file_changes(tmp_path):
    paths = write_face_models(tmp_path / "buffalo_l")
    first = face.load_face_analyzer(paths["folder"])
    assert face.load_face_analyzer(paths["folder"]) is first
    stat = paths["recognizer"].stat()
    os.utime(paths["recognizer"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert face.load_face_analyzer(paths["folder"]) is not first


def test_cached_analyzer_is_freed_with_its_last_holder(tmp_path):
    # ComfyUI's free path drops node outputs; the pack must not keep the onnxruntime sessions alive.
    paths = write_face_models(tmp_path / "buffalo_l")
    analyzer = face.load_face_analyzer(paths["folder"])
    gone = weakref.ref(analyzer)
    recognizer = weakref.ref(analyzer._recognizer)  # the insightface model that owns the ArcFace session
    del analyzer
    gc.collect()
    assert gone() is None and recognizer() is None
    assert face.load_face_analyzer(paths["folder"]) is not None

