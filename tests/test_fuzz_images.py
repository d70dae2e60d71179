"""Hostile photos: decompression bombs, truncated images and non-images are a HypernetError with
a one-line message, no pixel of a bomb is decoded (counted by instrumenting PIL's decoders, not
timed), nothing is written, and every photo the dataset builder and the sample CLI read goes
through common.images.read_image.

The bombs are made here from small real images whose headers are edited to claim a huge size
(no binary files in the repository).
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import hypernet
from hypernet.common.images import MAX_PIXELS, read_image
from hypernet.errors import HypernetError

PACKAGE = Path(hypernet.__file__).parent


def _encoded(fmt: str, size=(16, 12)) -> bytearray:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return bytearray(buffer.getvalue())


def png_claiming(width: int, height: int) -> bytes:
    data = _encoded("PNG")
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after signature, length and type
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # the chunk's CRC, so PNG readers accept it
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = _encoded("JPEG")
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = _encoded("BMP")
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = _encoded("GIF")
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen PIL takes the size from
    return bytes(data)


BOMBS = {
    "png 12000x12000": ("bomb.png", png_claiming(12000, 12000)),  # 144 MP: PIL only warns
    "png 8001x8000": ("bomb.png", png_claiming(8001, 8000)),  # just over our budget, far below PIL's
    "png 100000x100000": ("bomb.png", png_claiming(100_000, 100_000)),  # PIL's own error
    "jpeg 65000x65000": ("bomb.jpg", jpeg_claiming(65000, 65000)),
    "bmp 20000x20000": ("bomb.bmp", bmp_claiming(20000, 20000)),
    "gif 65535x65535": ("bomb.png", gif_claiming(65535, 65535)),  # a GIF under a .png name
}

BROKEN = {
    "empty": ("empty.png", b""),
    "text": ("notes.jpg", b"these are not pixels\n" * 20),
    "random bytes": ("noise.png", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    "png signature only": ("sig.png", bytes(_encoded("PNG")[:8])),
    "png cut in the header": ("cut.png", bytes(_encoded("PNG")[:20])),
    "png cut in the pixels": ("cut.png", bytes(_encoded("PNG", (64, 64))[:200])),
    "jpeg cut in the header": ("cut.jpg", bytes(_encoded("JPEG")[:40])),
    "jpeg cut in the pixels": ("cut.jpg", bytes(_encoded("JPEG", (64, 64))[:700])),
    "png with a wrong CRC": ("crc.png", bytes(_encoded("PNG")[:29]) + b"\0\0\0\0" + bytes(_encoded("PNG")[33:])),
    "safetensors named .png": ("lora.png", struct.pack("<Q", 2) + b"{}"),
    "png claiming 0x0": ("zero.png", png_claiming(0, 0)),
}


class Decodes:
    """Records the size of every image PIL starts decoding."""

    def __init__(self, monkeypatch):
        self.sizes: list[tuple[int, int]] = []
        for cls in (Image.Image, ImageFile.ImageFile):
            real = cls.load

            def load(image, _real=real):
                self.sizes.append(image.size)
                return _real(image)
            monkeypatch.setattr(cls, "load", load)


@pytest.fixture
def decodes(monkeypatch) -> Decodes:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # ComfyUI may set it in its process
    return Decodes(monkeypatch)


def _one_line(message: str) -> None:
    assert message and "\n" not in message and len(message) < 600, message


def _refused(path: Path, reader=read_image) -> str:
    before = sorted(path.parent.iterdir())
    with pytest.raises(HypernetError) as info:
        reader(path)
    _one_line(str(info.value))
    assert sorted(path.parent.iterdir()) == before
    return str(info.value)


@pytest.mark.parametrize("pil_check", ["PIL's defaults", "PIL's check off"])
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_from_the_header_without_decoding(name, pil_check, tmp_path, decodes, monkeypatch):
    if pil_check == "PIL's check off":  # our budget alone must refuse them
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    filename, data = BOMBS[name]
    path = tmp_path / filename
    path.write_bytes(data)
    assert len(data) < 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's bomb warning must not escape either
        message = _refused(path)
    assert "megapixels" in message and "scale it down" in message and str(path) in message
    assert decodes.sizes == []


def test_an_image_just_within_the_budget_is_read_and_the_budget_is_a_parameter(tmp_path, decodes):
    path = tmp_path / "photo.png"
    path.write_bytes(bytes(_encoded("PNG", (40, 30))))
    assert read_image(path).shape == (30, 40, 3)
    assert decodes.sizes and all(w * h <= MAX_PIXELS for w, h in decodes.sizes)
    decodes.sizes.clear()
    with pytest.raises(HypernetError, match="40 x 30 pixels"):
        read_image(path, max_pixels=40 * 30 - 1)
    assert decodes.sizes == []


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_truncated_images_and_non_images_are_refused(name, tmp_path, decodes):
    filename, data = BROKEN[name]
    path = tmp_path / filename
    path.write_bytes(data)
    message = _refused(path)
    assert str(path) in message
    assert all(w * h <= MAX_PIXELS for w, h in decodes.sizes)


def test_a_folder_or_a_missing_file_is_refused(tmp_path):
    _refused(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    _refused(tmp_path / "folder.png")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
def test_damaged_images_are_read_or_refused_with_a_message(fmt, cut, flips, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    data = _encoded(fmt, (24, 20))
    data = data[:max(1, int(len(data) * cut))] if cut < 1 else data
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    path = tmp_path_factory.mktemp("img") / f"photo.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        pixels = read_image(path)
    except HypernetError as exc:
        _one_line(str(exc))
    else:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS


# --- every image path of the library goes through read_image ----------------------------

def test_only_common_images_opens_image_files():
    """A second way to open images would bypass the pixel budget."""
    opener = re.compile(r"^\s*(from|import) (PIL|cv2|imageio|skimage\.io)\b|Image\.open\(|imread\(", re.M)
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if opener.search(p.read_text()) and p.relative_to(PACKAGE).as_posix() != "common/images.py"]
    assert offenders == []


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory) -> Path:
    from face_models import write_face_models
    return write_face_models(tmp_path_factory.mktemp("models") / "buffalo_l")["folder"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    from global_support import register_tiny_arch, write_open_clip_file
    register_tiny_arch()
    return write_open_clip_file(tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors")


@pytest.fixture
def bomb(tmp_path) -> Path:
    path = tmp_path / "photos" / "bomb.png"
    path.parent.mkdir()
    path.write_bytes(png_claiming(12000, 12000))
    return path


def test_face_and_global_encoders_refuse_a_bomb_without_decoding(face_folder, clip_file, bomb, decodes, monkeypatch):
    from global_support import TINY_ARCH
    from hypernet.encoders.face import ArcFaceEmbedder
    from hypernet.encoders.global_features import GlobalImageEncoder

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert "megapixels" in _refused(bomb, ArcFaceEmbedder(face_folder).embed_file)
    assert "megapixels" in _refused(bomb, GlobalImageEncoder.load(clip_file, TINY_ARCH).encode_file)
    assert decodes.sizes == []


def test_sample_cli_refuses_a_bomb_among_the_face_photos(face_folder, clip_file, bomb, decodes, monkeypatch):
    from global_support import TINY_ARCH, tiny_encoder_info
    from hypernet.cli.sample import face_input, global_input
    from hypernet.encoders.face import ArcFaceEmbedder

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    args = argparse.Namespace(embedding=None, face=[bomb], face_model=face_folder, global_features=None,
                              global_encoder=clip_file, global_arch=TINY_ARCH, global_device="cpu")
    model = SimpleNamespace(condition="face+global", embedding_model=ArcFaceEmbedder(face_folder).name,
                            config=SimpleNamespace(global_encoder=tiny_encoder_info()))
    for step in (face_input, global_input):
        with pytest.raises(HypernetError, match="megapixels") as info:
            step(args, model)
        _one_line(str(info.value))
    assert decodes.sizes == []


def test_dataset_builder_skips_a_folder_with_a_bomb_and_writes_no_cache_for_it(clip_file, tmp_path, decodes,
                                                                                monkeypatch):
    from global_support import TINY_ARCH
    from hypernet.data.builder import build_dataset
    from hypernet.data.synth import write_synth
    from hypernet.encoders.global_features import GlobalImageEncoder
    from hypernet.lora.presets import preset

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    tiny = preset("tiny-attn-r4")
    src = tmp_path / "src"
    write_synth(src, tiny, 3, progress=False)
    for i in range(3):
        (src / f"id-0000{i}" / "photo.png").write_bytes(bytes(_encoded("PNG", (32, 32))))
    (src / "id-00001" / "second.png").write_bytes(png_claiming(12000, 12000))
    shutil.copy(src / "id-00002" / "photo.png", src / "id-00002" / "other.png")
    encoder = GlobalImageEncoder.load(clip_file, TINY_ARCH)
    out = tmp_path / "data"
    result = build_dataset(src, out, layout=tiny, heldout=0.0, global_encoder=encoder, progress=False)
    assert result.kept == ["id-00000", "id-00002"]
    (skip,) = result.skipped
    assert skip["id"] == "id-00001" and skip["kind"] == "unreadable photo" and "megapixels" in skip["reason"]
    _one_line(skip["reason"])
    assert not (out / ".work" / "id-00001.safetensors").exists()
    assert all(w * h <= MAX_PIXELS for w, h in decodes.sizes)
    assert (32, 32) in decodes.sizes  # the good photos were decoded through the same instrumented path
