"""An insightface model pack on disk: finding its .onnx files and loading the detector and the
recogniser from them (nothing is downloaded; a missing file is an error saying what to put where)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import HypernetError

# Detector and recogniser files of the public packs; their other files (landmarks,
# gender/age) are skipped without loading.
KNOWN_PACKS = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
}
_UNUSED_PACK_FILES = {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"}
_KNOWN_MODEL_FILES = {name for pair in KNOWN_PACKS.values() for name in pair}


def _pack_hint(folder: Path) -> str:
    files = KNOWN_PACKS.get(folder.name)
    if files:
        return f"the {folder.name} files ({', '.join(files)})"
    return ("an SCRFD face detector (e.g. det_10g.onnx from buffalo_l or scrfd_10g_bnkps.onnx "
            "from antelopev2) and an ArcFace recogniser (e.g. w600k_r50.onnx or glintr100.onnx)")


def onnx_files(folder: Path) -> list[Path]:
    """The folder's .onnx files; a HypernetError saying what to put where if there are none."""
    if not folder.is_dir():
        raise HypernetError(
            f"insightface model folder not found: {folder}. Put {_pack_hint(folder)} in "
            f"{folder} (nothing is downloaded automatically).")
    files = sorted(path for path in folder.glob("*.onnx") if path.is_file())
    if files:
        return files
    nested = sorted({path.parent for path in folder.glob("*/*.onnx")})
    if nested:
        raise HypernetError(
            f"The insightface model files are in {nested[0]}, one folder too deep (the zip "
            f"unpacks a folder of its own): move them into {folder}.")
    raise HypernetError(f"No .onnx files in {folder}. Put {_pack_hint(folder)} there.")


def insightface_modules():
    try:
        from insightface.model_zoo import model_zoo
        from insightface.utils import face_align
    except ImportError as error:
        raise HypernetError(
            f"insightface could not be imported ({error}). Install it with "
            "'pip install insightface' (2.1 needs no compiler; 0.7.3 works too).") from error
    return model_zoo, face_align


@dataclass(frozen=True)
class ModelPair:
    detector: Any  # insightface SCRFD / RetinaFace; None for a folder with only a recogniser
    detector_file: Path | None
    recognizer: Any  # insightface ArcFaceONNX
    recognizer_file: Path


def _load(model_zoo, path: Path, providers: Sequence[str]):
    try:
        return model_zoo.get_model(str(path), providers=list(providers))
    except Exception as error:  # onnxruntime raises several types for bad files
        raise HypernetError(
            f"Could not load {path}: {error}. The file may be incomplete; "
            "download it again.") from error


def load_detector_and_recognizer(model_zoo, folder: Path, files: list[Path], providers: Sequence[str]) -> ModelPair:
    """The first detector and the first recogniser among `files`, loaded on `providers` (the
    detector None when there is none)."""
    found: dict[str, tuple[Any, Path]] = {}
    # Known detector/recogniser names first, so the rest usually need no loading.
    for path in sorted(files, key=lambda p: (p.name not in _KNOWN_MODEL_FILES, p.name)):
        if path.name in _UNUSED_PACK_FILES:
            continue
        model = _load(model_zoo, path, providers)
        found.setdefault(getattr(model, "taskname", None), (model, path))
        if "detection" in found and "recognition" in found:
            break
    names = ", ".join(path.name for path in files)
    if "recognition" not in found:
        raise HypernetError(
            f"No face recogniser (ArcFace) among the files in {folder} ({names}). "
            f"Put {_pack_hint(folder)} there.")
    recognizer, recognizer_file = found["recognition"]
    if "detection" not in found:
        # A recogniser alone is a usable analyzer: it embeds images that are already aligned
        # face crops (FaceAnalyzer.embed_crop); asking it to detect is the error then.
        return ModelPair(None, None, recognizer, recognizer_file)
    detector, detector_file = found["detection"]
    if not getattr(detector, "use_kps", True):
        raise HypernetError(
            f"The detector {detector_file} gives no face landmarks, which alignment "
            "needs; use an SCRFD model with keypoints such as det_10g.onnx.")
    return ModelPair(detector, detector_file, recognizer, recognizer_file)
