"""Face embeddings with insightface: an SCRFD detector and an ArcFace recogniser from one folder.

The folder is an insightface model pack such as `models/insightface/models/antelopev2/` or
`buffalo_l/`. Only its detector and recogniser are loaded; landmark and gender/age models are
ignored. Nothing is ever downloaded: a missing folder or file is a `HypernetError` that names
the folder and the files to put there.

insightface 0.7.3 (compiled, widespread in ComfyUI installs) and 2.1 (pure Python) are both
supported by calling only what they share:

* `insightface.model_zoo.model_zoo.get_model(<path to .onnx>, providers=[...])`: with a full
  file path neither version looks under ~/.insightface or downloads. It routes by the graph's
  inputs and outputs and returns an object with `.taskname` "detection" (0.7.3 `RetinaFace`,
  2.1 `SCRFD`: the same decoding) or "recognition" (`ArcFaceONNX`), and `.session`.
* `detector.detect(bgr, input_size=(w, h), max_num=0, metric="default")` -> boxes [n, 5]
  (x1, y1, x2, y2, score) and landmarks [n, 5, 2]; `detector.use_kps`. Thresholds stay at
  the defaults both versions set (score 0.5, NMS 0.4), so `prepare()` is not needed.
* `recogniser.get_feat(aligned_bgr)` -> [1, 512]; `recogniser.input_size`.
* `insightface.utils.face_align.norm_crop(bgr, landmark=kps, image_size=112)`.

Aligned-crop mode (`embed_crop`, Face Embed's `face_crop` option): no detection, the whole
image is taken as the aligned face, resized to the recogniser's input. For photos a user has
already cropped and aligned, and for recognisers of other "faces" (the typeface miniature's
specimen sheets). A folder with only a recogniser loads; such an analyzer embeds crops only.

Not used: `FaceAnalysis` (0.7.3 calls `ensure_available`, which downloads a missing pack) and
`get_model(<pack name>)`. insightface works on BGR arrays (OpenCV order); this module takes
and returns RGB.
"""
from __future__ import annotations

import logging
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..common.images import read_image, resize_rgb
from ..common.tensors import l2_normalize, mean_embedding
from ..errors import HypernetError
from .insightface_pack import insightface_modules, load_detector_and_recognizer, onnx_files
from .onnx_providers import provider_name, resolve_providers, warn_about_runtime_conflict

logger = logging.getLogger(__name__)

DETECTION_SIZES = (640, 512, 384, 256)
PAD_FRACTION = 0.25  # black border added on each side, as a fraction of the longer side
EMBEDDING_DIM = 512
WHOLE_IMAGE = "whole image is the aligned crop"
_TRIED = f"tried detection sizes {', '.join(map(str, DETECTION_SIZES))} and padding"



@dataclass(frozen=True, eq=False)
class FaceResult:
    """The face picked in one image (the largest) and its embedding.

    Coordinates are pixels of the image given, even when the face was found after padding.
    """

    embedding: np.ndarray  # float32 [512], unit length
    bbox: np.ndarray  # float32 [4]: x1, y1, x2, y2
    kps: np.ndarray  # float32 [5, 2]: eyes, nose, mouth corners (x, y)
    det_score: float
    crop: np.ndarray  # uint8 [112, 112, 3] RGB: the aligned face the recogniser saw
    num_faces: int  # faces found in the detection pass that succeeded
    det_size: int  # detector input size of that pass
    padded: bool  # found only after padding the image
    aligned_input: bool = False  # aligned-crop mode: the whole image was the crop (no bbox/kps meaning)


@dataclass(frozen=True, eq=False)
class FaceEmbeddings:
    """Embeddings of several reference photos of one person."""

    embeddings: np.ndarray  # float32 [k, 512], one unit vector per photo with a face
    identity: np.ndarray  # float32 [512]: normalised mean of `embeddings`
    faces: list[FaceResult]  # per photo with a face, in input order
    used: list[int]  # 0-based indices of those photos in the input list
    skipped: list[int] = field(default_factory=list)  # 0-based indices without a face
    model_name: str = ""


def _unit(vector: np.ndarray) -> np.ndarray:
    return l2_normalize(torch.as_tensor(np.asarray(vector, dtype=np.float64)), "a face embedding").numpy()


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between the directions of `a` (t=0) and `b` (t=1); unit length.

    Nearly equal vectors interpolate linearly. For opposite vectors every great circle is
    a shortest path; the one through a fixed axis orthogonal to `a` is taken, which makes
    the midpoint the same for (a, b) and (b, a).
    """
    a, b = _unit(np.asarray(a, dtype=np.float64)), _unit(np.asarray(b, dtype=np.float64))
    cos = float(np.clip(a @ b, -1.0, 1.0))
    if cos > 1.0 - 1e-9:
        result = (1.0 - t) * a + t * b
    elif cos < -1.0 + 1e-9:
        axis = np.zeros_like(a)
        axis[np.argmin(np.abs(a))] = 1.0
        orthogonal = _unit(axis - (axis @ a) * a)
        result = np.cos(np.pi * t) * a + np.sin(np.pi * t) * orthogonal
    else:
        angle = np.arccos(cos)
        result = (np.sin((1.0 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)
    return _unit(result).astype(np.float32)


def _as_rgb_uint8(image: np.ndarray, label: str) -> np.ndarray:
    """RGB uint8 HxWx3 from uint8 or [0, 1] float images, grey or with alpha."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise HypernetError(f"{label} has shape {array.shape}; expected an RGB image (H, W, 3).")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return array


class FaceAnalyzer:
    """Detector + recogniser loaded from an insightface model folder (see module docstring).

    Loading is slow for real models: use `load_face_analyzer`, which caches instances.
    """

    def __init__(self, model_dir: str | Path, providers: Sequence[str] = ("CPU",)):
        warn_about_runtime_conflict()
        self.model_dir = Path(model_dir).expanduser().resolve()
        files = onnx_files(self.model_dir)
        model_zoo, self._face_align = insightface_modules()
        requested = resolve_providers(providers)
        pair = load_detector_and_recognizer(model_zoo, self.model_dir, files, requested)
        self._detector, self._recognizer = pair.detector, pair.recognizer
        self.detector_file, self.recognizer_file = pair.detector_file, pair.recognizer_file
        self.providers = list(self._recognizer.session.get_providers())
        self._warn_about_unstarted(requested)
        self.name = f"insightface/{self.model_dir.name}/{self.recognizer_file.name}"

    def _warn_about_unstarted(self, requested: Sequence[str]) -> None:
        """onnxruntime falls back to CPU quietly when a provider fails to start; say so."""
        sessions = [m.session for m in (self._detector, self._recognizer) if m is not None]
        used = set.intersection(*(set(s.get_providers()) for s in sessions))
        for provider in requested:
            if provider not in used:
                logger.warning(
                    "onnxruntime could not start %s (see its log above); the face models run "
                    "on %s.", provider, self.providers[0])

    def detect(self, image: np.ndarray, *, label: str = "The image") -> FaceResult | None:
        """The largest face in an RGB image with its embedding, or None if none is found.

        Tries each size of DETECTION_SIZES, then the same on the image with a black border
        of PAD_FRACTION of its longer side (faces cropped tightly are found only so).
        """
        if self._detector is None:
            raise HypernetError(
                f"The face analyzer {self.name} has no face detector ({self.model_dir} holds only "
                "a recognition model), so it cannot find faces: if your images are aligned face crops, "
                f"set Face Embed's face_crop to '{WHOLE_IMAGE}' (--aligned-crops on the command line); "
                "otherwise add an SCRFD detector (e.g. det_10g.onnx from buffalo_l) to that folder.")
        rgb = _as_rgb_uint8(image, label)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        for pad in (0, int(round(PAD_FRACTION * max(bgr.shape[:2])))):
            canvas = np.pad(bgr, ((pad, pad), (pad, pad), (0, 0))) if pad else bgr
            for size in DETECTION_SIZES:
                boxes, landmarks = self._detector.detect(
                    canvas, input_size=(size, size), max_num=0, metric="default")
                if len(boxes):
                    return self._embed_largest(canvas, boxes, landmarks, pad, size)
        return None

    def _embed_largest(self, canvas, boxes, landmarks, pad: int, size: int) -> FaceResult:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.argmax(areas))
        kps = np.asarray(landmarks[best], dtype=np.float32)
        with warnings.catch_warnings():
            # scikit-image >= 0.26 deprecates the call norm_crop makes; one line per photo
            # in the ComfyUI console helps nobody.
            warnings.simplefilter("ignore", FutureWarning)
            crop = self._face_align.norm_crop(canvas, landmark=kps,
                                              image_size=self._recognizer.input_size[0])
        feature = np.asarray(self._recognizer.get_feat(crop), dtype=np.float64).reshape(-1)
        return FaceResult(
            embedding=_unit(feature).astype(np.float32),
            bbox=(boxes[best, :4] - pad).astype(np.float32),
            kps=kps - pad,
            det_score=float(boxes[best, 4]),
            crop=np.ascontiguousarray(crop[:, :, ::-1]),
            num_faces=len(boxes),
            det_size=size,
            padded=pad > 0,
        )

    @property
    def can_detect(self) -> bool:
        return self._detector is not None

    def embed_crop(self, image: np.ndarray, *, label: str = "The image") -> FaceResult:
        """Aligned-crop mode: the whole RGB image, resized to the recogniser's input, is the face."""
        rgb = _as_rgb_uint8(image, label)
        width, height = self._recognizer.input_size
        rgb = resize_rgb(rgb, width, height)
        crop_bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        feature = np.asarray(self._recognizer.get_feat(crop_bgr), dtype=np.float64).reshape(-1)
        h, w = image.shape[:2]
        return FaceResult(
            embedding=_unit(feature).astype(np.float32),
            bbox=np.array([0, 0, w, h], np.float32),
            kps=np.zeros((5, 2), np.float32),
            det_score=1.0,
            crop=np.ascontiguousarray(rgb),
            num_faces=1,
            det_size=0,
            padded=False,
            aligned_input=True,
        )

    def embed_images(self, images: Sequence[np.ndarray], *, skip_missing: bool = False,
                     on_progress: Callable[[int, int], None] | None = None,
                     aligned_crops: bool = False) -> FaceEmbeddings:
        """Embed several photos of one person (RGB HxWx3) and combine them into one identity.

        Without `skip_missing` a photo without a face is an error naming it; with it, such
        photos are skipped and listed in `skipped`. `on_progress(done, total)` is called after
        each photo (the ComfyUI node updates its progress bar and checks for cancel there).
        With `aligned_crops` every image is embedded whole (`embed_crop`), nothing is skipped.
        """
        total = len(images)
        if total == 0:
            raise HypernetError("No reference images given; connect at least one face photo.")
        faces, used, skipped = [], [], []
        for index, image in enumerate(images):
            label = f"Reference image {index + 1} of {total}"
            face = self.embed_crop(image, label=label) if aligned_crops else self.detect(image, label=label)
            if face is not None:
                faces.append(face)
                used.append(index)
            elif skip_missing:
                logger.warning("No face detected in reference image %d of %d; skipped.",
                               index + 1, total)
                skipped.append(index)
            else:
                raise HypernetError(
                    f"No face detected in reference image {index + 1} of {total} "
                    f"({_TRIED}). Use a photo where the face is clearly visible, or turn on "
                    "'skip photos without face'.")
            if on_progress is not None:
                on_progress(index + 1, total)
        if not faces:
            raise HypernetError(
                f"No face detected in any of the {total} reference images ({_TRIED}). "
                "Use photos where the face is clearly visible.")
        embeddings = np.stack([face.embedding for face in faces])
        return FaceEmbeddings(embeddings=embeddings, identity=mean_embedding(embeddings).numpy(),
                              faces=faces, used=used, skipped=skipped, model_name=self.name)


# Weak values: an analyzer is shared while someone holds it (ComfyUI's output cache, the CLI's
# embedder) and freed with the last holder, so ComfyUI's free path, which drops node outputs,
# also frees the onnxruntime sessions; a strong cache here would keep them for the process's life.
_cache: "weakref.WeakValueDictionary[tuple, FaceAnalyzer]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def load_face_analyzer(model_dir: str | Path, providers: Sequence[str] = ("CPU",)) -> FaceAnalyzer:
    """A FaceAnalyzer shared by all callers with the same folder, providers and files, as long
    as one of them still holds it.

    Replacing a file in the folder (new modification time or size) loads it afresh.
    """
    folder = Path(model_dir).expanduser().resolve()
    files = onnx_files(folder)
    stamps = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    place = (str(folder), tuple(provider_name(name) for name in providers))
    with _cache_lock:
        key = place + (stamps,)
        analyzer = _cache.get(key)
        if analyzer is None:
            analyzer = FaceAnalyzer(folder, providers)
            for stale in [k for k in _cache if k[:2] == place]:
                del _cache[stale]
            _cache[key] = analyzer
        return analyzer


class ArcFaceEmbedder:
    """Embeds photo files for the dataset builder and the CLI (one cached FaceAnalyzer)."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] = ("CPU",), aligned_crops: bool = False):
        self.analyzer = load_face_analyzer(model_dir, providers)
        self.name = self.analyzer.name  # e.g. "insightface/antelopev2/glintr100.onnx"
        self.aligned_crops = aligned_crops

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """Unit embedding float32 [512] of the largest face in an RGB image (of the whole
        image in aligned-crop mode)."""
        if self.aligned_crops:
            return self.analyzer.embed_crop(image).embedding
        face = self.analyzer.detect(image)
        if face is None:
            raise HypernetError(
                f"No face detected in the image ({_TRIED}). Use a photo where the face is "
                "clearly visible.")
        return face.embedding

    def embed_file(self, path: str | Path) -> np.ndarray:
        """Unit embedding float32 [512] of the largest face in an image file (of the whole
        image in aligned-crop mode)."""
        if self.aligned_crops:
            return self.analyzer.embed_crop(read_image(path), label=str(path)).embedding
        face = self.analyzer.detect(read_image(path), label=str(path))
        if face is None:
            raise HypernetError(
                f"No face detected in {path} ({_TRIED}). Use a photo where the face is "
                "clearly visible.")
        return face.embedding
