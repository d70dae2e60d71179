"""The typeface miniature's glyph base model in a real ComfyUI: the pixel fold behind the stock
VAE nodes, the file format and its refusals, the load and prompt nodes with the stock KSampler
(in-process and through the server), training, and the pack's Apply LoRA on the glyph MODEL."""
from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_support import TINY_SDXL_UNET
from glyph_support import pillow_glyphs, random_glyph_model
from random_weights import random_kohya_state

CHARS = "ABCabc012"


@pytest.fixture(scope="module")
def comfy_nodes(comfy):
    """ComfyUI's own nodes.py (KSampler, VAE Decode/Encode)."""
    import nodes
    return nodes


@pytest.fixture(scope="module")
def glyph_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.glyph_nodes")


@pytest.fixture
def glyph_dir(comfy, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "glyph_models", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


@pytest.fixture
def loaded(glyph_nodes, glyph_dir):
    random_glyph_model(glyph_dir / "glyphs.safetensors", CHARS)
    return glyph_nodes.LoadGlyphModel.execute("glyphs.safetensors").result


def test_the_glyph_unet_is_the_tiny_sdxl_unet_so_the_tiny_layout_presets_fit():
    from miniature.base_model import GLYPH_UNET
    assert GLYPH_UNET == TINY_SDXL_UNET


def test_the_fold_is_lossless_and_puts_2x2_blocks_into_the_four_channels():
    from miniature.pixel_fold import PixelFold, glyphs_to_latents
    glyphs = pillow_glyphs(CHARS)
    latents = glyphs_to_latents(glyphs)
    assert latents.shape == (len(CHARS), 4, 8, 8)
    fold = PixelFold()
    pixels = glyphs.float() / 127.5 - 1
    back = fold.decode(latents)
    assert back.shape == (len(CHARS), 3, 16, 16)
    torch.testing.assert_close(back, pixels.unsqueeze(1).expand(-1, 3, -1, -1), rtol=0, atol=1e-6)
    # pixel (2y + i, 2x + j) lands in channel 2i + j at (y, x), in SDXL latent units
    assert latents[0, 3, 2, 5] * fold.latent_scale + fold.shift == pytest.approx(pixels[0, 5, 11].item(), abs=1e-6)
    assert fold.encode(torch.full((1, 3, 2, 2), -1.0)).abs().max() == 0  # black, the background, is latent 0
    assert glyphs.float().std() > 50  # real glyphs, not a blank image


def test_stock_vae_encode_and_decode_round_trip_through_the_fold(comfy, comfy_nodes, loaded):
    _, vae, _ = loaded
    glyphs = pillow_glyphs(CHARS, 32)
    image = (glyphs.float() / 255).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    (latent,) = comfy_nodes.VAEEncode().encode(vae, image)
    assert latent["samples"].shape == (len(CHARS), 4, 16, 16)
    (decoded,) = comfy_nodes.VAEDecode().decode(vae, latent)
    assert decoded.shape == image.shape
    torch.testing.assert_close(decoded, image, rtol=0, atol=1e-5)


def test_load_and_prompt_then_the_stock_ksampler_draws_one_glyph_per_character(comfy, comfy_nodes, glyph_nodes, loaded):
    model, vae, glyph_text = loaded
    assert isinstance(model.model, comfy.model_base.SDXL)
    positive, negative, latent = glyph_nodes.GlyphPrompt.execute(glyph_text, "Bb2a").result
    assert latent["samples"].shape == (4, 4, 8, 8)
    assert positive[0][0].shape == (4, 4, 64) and positive[0][1]["pooled_output"].shape == (4, 1280)
    (samples,) = comfy_nodes.common_ksampler(model, 7, 3, 2.0, "euler", "normal", positive, negative, latent)
    (images,) = comfy_nodes.VAEDecode().decode(vae, samples)
    assert images.shape == (4, 16, 16, 3)
    assert torch.isfinite(images).all()
    # the characters condition the model: other characters, same seed, other glyphs
    other, negative2, _ = glyph_nodes.GlyphPrompt.execute(glyph_text, "CA0c").result
    (samples2,) = comfy_nodes.common_ksampler(model, 7, 3, 2.0, "euler", "normal", other, negative2, latent)
    assert not torch.allclose(samples["samples"], samples2["samples"])


def test_prompt_refuses_characters_the_model_does_not_have(glyph_nodes, loaded):
    with pytest.raises(ValueError, match=r"no character 'xyz'.*draws only 'ABCabc012'"):
        glyph_nodes.GlyphPrompt.execute(loaded[2], "Axyz")
    with pytest.raises(ValueError, match="at least one character"):
        glyph_nodes.GlyphPrompt.execute(loaded[2], "")
    with pytest.raises(ValueError, match="connect the output of Load Glyph Model"):
        glyph_nodes.GlyphPrompt.execute({"not": "ours"}, "A")


def test_apply_lora_with_the_tiny_layout_changes_what_the_glyph_model_draws(comfy, comfy_nodes, pack, lora_nodes,
                                                                          glyph_nodes, loaded):
    from hypernet.lora.presets import preset
    model, vae, glyph_text = loaded
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    layout = preset("tiny-attn-r4")
    lora = values.LoraValue(random_kohya_state(layout, seed=3, scale=0.3), layout)
    patched, _ = lora_nodes.ApplyLoRA.execute(model, lora, 1.0).result
    positive, negative, latent = glyph_nodes.GlyphPrompt.execute(glyph_text, "Aa0").result
    outputs = [comfy_nodes.common_ksampler(m, 1, 2, 1.0, "euler", "normal", positive, negative, latent)[0]["samples"]
               for m in (model, patched, model)]
    comfy.model_management.unload_all_models()
    torch.testing.assert_close(outputs[0], outputs[2])  # the incoming MODEL is left as it was
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


def _corrupt(tmp_path: Path, name: str, tensors=None, metadata=None, raw: bytes | None = None) -> Path:
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        save_file(tensors, str(path), metadata)
    return path


def test_bad_and_hostile_files_get_a_one_line_error_that_says_what_is_wrong(comfy, tmp_path):
    from miniature.glyph_model_file import load_glyph_model
    from miniature.comfy_glyph import glyph_model_patcher
    good = random_glyph_model(tmp_path / "good.safetensors", CHARS)
    tensors = load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    header = json.dumps({"__metadata__": meta}).encode()
    cases = {
        "a pickle.ckpt": (dict(raw=b"\x80\x04K\x01."), r"only \.safetensors"),
        "truncated.safetensors": (dict(raw=good.read_bytes()[:5000]), "not a readable safetensors file"),
        "garbage.safetensors": (dict(raw=b"\xff" * 64), "not a readable safetensors file"),
        "huge-header.safetensors": (dict(raw=struct.pack("<Q", 1 << 40) + header), "not a readable safetensors file"),
        "a lora.safetensors": (dict(tensors={"x": torch.zeros(1)}, metadata={"format": "pt"}), "not a glyph model"),
        "future.safetensors": (dict(tensors=tensors, metadata=dict(meta, version="9")), "version '9' is not supported"),
        "giant.safetensors": (dict(tensors=tensors, metadata=dict(meta, unet_config=json.dumps(
            dict(TINY_SDXL_UNET, model_channels=100000)))), "model_channels=100000, outside"),
        "code.safetensors": (dict(tensors=tensors, metadata=dict(meta, unet_config=json.dumps(
            dict(TINY_SDXL_UNET, num_classes="__import__('os')", extra=1)))), "unknown keys"),
        "badjson.safetensors": (dict(tensors=tensors, metadata=dict(meta, fold="{")), "'fold' is not valid JSON"),
        "nan.safetensors": (dict(tensors=dict(tensors, **{"text.pooled": tensors["text.pooled"] * float("nan")}),
                                 metadata=meta), "NaN or infinite"),
        "short.safetensors": (dict(tensors={k: v for k, v in tensors.items() if k != "text.context"}, metadata=meta),
                              "text.context is None"),
        "dup.safetensors": (dict(tensors=tensors, metadata=dict(meta, charset="AAB")), "repeats a character"),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(ValueError, match=message) as caught:
            load_glyph_model(_corrupt(tmp_path, name, **spec))
        assert "\n" not in str(caught.value) and name.split(".")[0] in str(caught.value)
    # shapes that disagree with the config are found before anything is built from them
    wrong = dict(tensors, **{"unet.out.2.weight": torch.zeros(4, 32, 5, 5)})
    glyph = load_glyph_model(_corrupt(tmp_path, "wrong.safetensors", tensors=wrong, metadata=meta))
    with pytest.raises(ValueError, match=r"wrong shape out\.2\.weight"):
        glyph_model_patcher(glyph, "wrong.safetensors")


def test_loader_names_the_folder_for_a_missing_file(glyph_nodes, glyph_dir):
    with pytest.raises(ValueError, match=f"not found; put glyph models in {glyph_dir}"):
        glyph_nodes.LoadGlyphModel.execute("absent.safetensors")


def test_a_few_training_steps_lower_the_denoising_loss(comfy):
    from argparse import Namespace

    from miniature.pixel_fold import glyphs_to_latents
    from miniature.train_base import PRESETS, Trainer
    torch.set_num_threads(1)
    chars = "AaBb0"
    latents = glyphs_to_latents(pillow_glyphs(chars))
    rows = torch.arange(1, len(chars) + 1)
    args = Namespace(**dict(PRESETS["ci"], steps=30, lr=2e-3), seed=0, charset=chars, size=16, font_names=["pillow"])
    trainer = Trainer(args, latents, rows)
    before = trainer.eval_loss()
    for _ in range(args.steps):
        trainer.train_step()
    after = trainer.eval_loss()
    assert after < 0.8 * before, (before, after)


def test_training_resumes_bit_for_bit(comfy, tmp_path):
    from argparse import Namespace

    from miniature.pixel_fold import glyphs_to_latents
    from miniature.train_base import PRESETS, Trainer
    torch.set_num_threads(1)
    chars = "Ab"
    latents, rows = glyphs_to_latents(pillow_glyphs(chars)), torch.arange(1, 3)
    args = Namespace(**dict(PRESETS["ci"], batch=2, ema=0.9), seed=5, charset=chars, size=16, font_names=["pillow"])
    straight = Trainer(args, latents, rows)
    losses = [straight.train_step() for _ in range(4)]
    first = Trainer(args, latents, rows)
    first.train_step(), first.train_step()
    first.save_state(tmp_path / "state.safetensors")
    resumed = Trainer(args, latents, rows)
    resumed.load_state(tmp_path / "state.safetensors")
    assert [resumed.train_step() for _ in range(2)] == losses[2:]
    for a, b in zip(straight.ema, resumed.ema):
        assert torch.equal(a, b)


def test_a_stock_graph_on_the_server_saves_one_glyph_image_per_character(comfy_server):
    import numpy as np
    from PIL import Image
    random_glyph_model(comfy_server.base_dir / "models" / "glyph_models" / "glyph_test.safetensors", CHARS)
    prompt = {
        "1": {"class_type": "LoraHypernetLoadGlyphModel", "inputs": {"glyph_model_name": "glyph_test.safetensors"}},
        "2": {"class_type": "LoraHypernetGlyphPrompt", "inputs": {"glyph_text": ["1", 2], "characters": "aB0cA"}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["2", 2], "seed": 3,
            "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 1]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "glyph_test"}},
    }
    entry, _ = comfy_server.run_prompt(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["5"]["images"]
    assert len(images) == 5
    for image in images:
        path = comfy_server.base_dir / "output" / image["subfolder"] / image["filename"]
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (16, 16, 3)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # grey


def test_train_command_ci_size_writes_a_loadable_file_and_never_overwrites(comfy, tmp_path):
    """python -m miniature.train_base on a few fonts of the tests' Debian package, CI preset."""
    import os
    import subprocess
    import sys

    from comfy_support import COMFYUI_PATH, REPO
    from font_support import urw_font
    from miniature.glyph_model_file import load_glyph_model
    fonts = [str(urw_font(name)) for name in ("NimbusSans-Regular.otf", "C059-Roman.otf", "P052-Roman.otf")]
    out = tmp_path / "glyph_ci.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", COMFYUI_PATH=str(COMFYUI_PATH))

    def train(*extra):
        return subprocess.run([sys.executable, "-m", "miniature.train_base", "--preset", "ci", "--fonts", *fonts,
                               "--out", str(out), "--charset", "AaB0", *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = train()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 fonts, 12 glyphs at 16 px" in first.stdout
    glyph = load_glyph_model(out)
    assert glyph.text.charset == "AaB0" and glyph.training["steps"] == 12
    assert glyph.training["fonts"] == ["NimbusSans-Regular.otf", "C059-Roman.otf", "P052-Roman.otf"]
    again = train()
    assert again.returncode == 2 and "exists; pass --resume" in again.stderr
    other = train("--resume", "--seed", "1")
    assert other.returncode == 2 and "other fonts or settings" in other.stderr


def test_glyph_sheet_lays_a_batch_out_in_rows_enlarged_without_smoothing(comfy, glyph_nodes):
    images = torch.rand(5, 16, 16, 3)
    (sheet,) = glyph_nodes.GlyphSheet.execute(images, 2, 3).result
    # 3 rows of 2 cells, 1 px grey gaps, every pixel repeated 3 x 3 times
    assert sheet.shape == (1, 3 * 17 * 3, 2 * 17 * 3, 3)
    cell = sheet[0, 17 * 3:17 * 3 + 16 * 3, 0:16 * 3]  # second row, first column: glyph 2
    torch.testing.assert_close(cell[::3, ::3], images[2])
    torch.testing.assert_close(cell[1::3, 2::3], images[2])
    assert torch.all(sheet[0, 2 * 17 * 3:2 * 17 * 3 + 48, 17 * 3:17 * 3 + 48] == 0.5)  # the padded sixth cell
    (row,) = glyph_nodes.GlyphSheet.execute(images, 0, 1).result
    assert row.shape == (1, 17, 5 * 17, 3)
    with pytest.raises(ValueError, match="non-empty IMAGE batch"):
        glyph_nodes.GlyphSheet.execute(torch.rand(0, 16, 16, 3), 0, 1)
