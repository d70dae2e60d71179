"""Global image features: open_clip here and ComfyUI's CLIP_VISION give the same features for
the same weights; encoder identity; bad weight files are clear errors."""
import importlib

import pytest
import torch
from safetensors.torch import save_file

from global_support import (TINY_ARCH, TINY_DIM, TINY_IMAGE, comfy_clip_vision, register_tiny_arch, tiny_weights,
                            write_comfy_file, write_open_clip_file)
from hypernet.errors import HypernetError
from hypernet.encoders.encoder_info import EncoderInfo, check_encoder, projection_fingerprint
from hypernet.encoders.global_features import GlobalImageEncoder, architectures_matching, preprocess_images


@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory):
    register_tiny_arch()
    return write_open_clip_file(tmp_path_factory.mktemp("clip") / "tiny_open_clip.safetensors")


@pytest.fixture(scope="module")
def comfy_file(comfy, tmp_path_factory):
    register_tiny_arch()
    return write_comfy_file(tmp_path_factory.mktemp("clip_vision") / "tiny_clip_vision.safetensors")


@pytest.fixture(scope="module")
def encoder(open_clip_file):
    return GlobalImageEncoder.load(open_clip_file, TINY_ARCH)


def images(height, width, n=3, seed=0):
    return torch.rand(n, height, width, 3, generator=torch.Generator().manual_seed(seed))


def comfy_features(clip_vision, batch):
    return torch.nn.functional.normalize(clip_vision.encode_image(batch)["image_embeds"].float(), dim=-1)


@pytest.mark.parametrize("size", [(TINY_IMAGE, TINY_IMAGE), (90, 70), (41, 130)])
def test_open_clip_and_comfyui_clip_vision_give_the_same_features(comfy, pack, encoder, open_clip_file, comfy_file, size):
    batch = images(*size)
    ours = encoder.encode(batch)
    for clip_vision in (comfy_clip_vision(open_clip_file), comfy_clip_vision(comfy_file)):
        theirs = comfy_features(clip_vision, batch)
        assert ours.shape == theirs.shape == (3, TINY_DIM)
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours - theirs).abs().max()
    # not trivially equal: different photos give clearly different features
    assert float(ours[0] @ ours[1]) < 0.99


def test_the_comfyui_model_gets_the_same_name_and_fingerprint(comfy, pack, encoder, comfy_file):
    glue = importlib.import_module(f"{pack.__name__}.nodes.comfy_glue")
    spec, projection = glue.clip_vision_spec(comfy_clip_vision(comfy_file))
    assert projection_fingerprint(projection) == encoder.info.fingerprint
    assert TINY_ARCH in architectures_matching(spec)
    assert encoder.info == EncoderInfo(TINY_ARCH, TINY_DIM, projection_fingerprint(tiny_weights()["proj"]))


def test_a_clip_vision_file_in_comfyui_layout_loads_with_open_clip(encoder, comfy_file):
    batch = images(TINY_IMAGE, TINY_IMAGE)
    from_comfy_layout = GlobalImageEncoder.load(comfy_file, TINY_ARCH)
    assert from_comfy_layout.info == encoder.info
    assert torch.equal(from_comfy_layout.encode(batch), encoder.encode(batch))


def test_features_are_unit_vectors_and_one_photo_encodes_like_a_batch(encoder, tmp_path):
    from PIL import Image
    batch = images(80, 100, n=2)
    feats = encoder.encode(batch)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(encoder.encode(batch[1:]), feats[1:], atol=1e-6)
    photo = (batch[0].numpy() * 255).round().astype("uint8")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    as_loaded = torch.from_numpy(photo).float()[None] / 255  # what LoadImage would give for the file
    assert torch.allclose(encoder.encode_file(tmp_path / "photo.png"), encoder.encode(as_loaded)[0], atol=1e-6)


def test_preprocessing_crops_the_centre_of_the_shorter_side():
    wide = torch.zeros(1, 32, 96, 3)
    wide[:, :, 32:64] = 1.0  # only the middle third is white
    pixels = preprocess_images(wide, 32, mean=(0, 0, 0), std=(1, 1, 1))
    assert pixels.shape == (1, 3, 32, 32)
    assert float(pixels[..., 4:-4].min()) > 0.99  # the crop is the white centre
    with pytest.raises(HypernetError, match="batch, height, width"):
        preprocess_images(torch.zeros(32, 32, 3), 32)


def test_fingerprint_ignores_float16_storage_but_not_other_weights():
    proj = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 0.05
    assert projection_fingerprint(proj) == projection_fingerprint(proj.half())
    assert projection_fingerprint(proj) != projection_fingerprint(proj * 1.01)
    assert projection_fingerprint(proj) != projection_fingerprint(proj.t())


def test_check_encoder_refuses_another_architecture_size_weights_or_synthetic_features():
    real = EncoderInfo("ViT-H-14", 1024, "0123456789abcdef")
    check_encoder(real.to_dict(), dict(real.to_dict()))
    with pytest.raises(HypernetError, match="different architecture"):
        check_encoder(real, EncoderInfo("ViT-L-14", 1024, real.fingerprint))
    with pytest.raises(HypernetError, match="different feature size"):
        check_encoder(real, EncoderInfo("ViT-H-14", 768, real.fingerprint))
    with pytest.raises(HypernetError, match="different weights"):
        check_encoder(real, EncoderInfo("ViT-H-14", 1024, "fedcba9876543210"))
    synthetic = EncoderInfo("ViT-H-14", 1024, "synthetic")
    with pytest.raises(HypernetError, match="synthetic global features"):
        check_encoder(synthetic, real)
    with pytest.raises(HypernetError, match="synthetic global features"):
        check_encoder(real, synthetic)
    check_encoder(synthetic, synthetic)
    with pytest.raises(HypernetError, match="name, a positive dim"):
        check_encoder({"name": "ViT-H-14", "dim": "1024", "fingerprint": "x"}, real)
    assert EncoderInfo.from_dict(real.to_dict()) == real


def test_bad_weight_files_are_clear_errors(open_clip_file, tmp_path):
    data = open_clip_file.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HypernetError, match="not a readable .safetensors"):
        GlobalImageEncoder.load(tmp_path / "truncated.safetensors", TINY_ARCH)
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(HypernetError, match="pickled"):
        GlobalImageEncoder.load(tmp_path / "model.bin", TINY_ARCH)
    with pytest.raises(HypernetError, match="does not exist"):
        GlobalImageEncoder.load(tmp_path / "absent.safetensors", TINY_ARCH)
    with pytest.raises(HypernetError, match="does not hold ViT-B-32"):
        GlobalImageEncoder.load(open_clip_file, "ViT-B-32")
    with pytest.raises(HypernetError, match="unknown open_clip architecture"):
        GlobalImageEncoder.load(open_clip_file, "hf-hub:someone/model")  # never a download
    weights = {f"visual.{k}": v.clone() for k, v in tiny_weights().items()}
    weights["visual.ln_post.weight"][3] = float("nan")
    save_file(weights, str(tmp_path / "nan.safetensors"))
    with pytest.raises(HypernetError, match="NaN or Inf"):
        GlobalImageEncoder.load(tmp_path / "nan.safetensors", TINY_ARCH)
    weights["visual.ln_post.weight"][3] = 1e6  # beyond float16, which ComfyUI would hold it in
    save_file(weights, str(tmp_path / "huge.safetensors"))
    with pytest.raises(HypernetError, match="does not fit float16"):
        GlobalImageEncoder.load(tmp_path / "huge.safetensors", TINY_ARCH)


def test_architectures_comfyui_cannot_run_are_refused():
    with pytest.raises(HypernetError, match="not supported"):
        GlobalImageEncoder.load("unused.safetensors", "ViT-B-16-SigLIP")
