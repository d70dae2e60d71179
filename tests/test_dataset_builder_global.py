"""The dataset builder's global image features: from global.safetensors files or computed from
the photos with an open_clip encoder, and the encoder identity in the manifest."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from global_support import TINY_ARCH, TINY_DIM, register_tiny_arch, tiny_encoder_info, write_open_clip_file
from hypernet.cli import main
from hypernet.data.dataset import open_dataset
from hypernet.data.builder import build_dataset
from hypernet.errors import HypernetError
from hypernet.encoders.global_features import GlobalImageEncoder
from hypernet.lora.presets import preset
from hypernet.data.synth import GLOBAL_MODEL, write_synth

TINY = preset("tiny-attn-r4")
G = 8


@pytest.fixture(scope="module")
def synth_global(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("synth_global")
    write_synth(src, TINY, 6, progress=False, global_dim=G, depends="face+global")
    return src


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    register_tiny_arch()
    return write_open_clip_file(tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors")


def _all_rows(data, global_features: bool = True) -> dict[str, torch.Tensor]:
    rows = {}
    for split in ("train", "heldout"):
        ids = data.ids(split)
        if ids:
            rows.update(zip(ids, data.load_global(split) if global_features else data.load(split)[1]))
    return rows


def _file_embedding(path: Path) -> torch.Tensor:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("embedding")


def test_global_files_go_into_the_dataset_with_their_encoder(synth_global, tmp_path):
    result = build_dataset(synth_global, tmp_path / "data", heldout=0.34, progress=False)
    assert len(result.kept) == 6 and not result.skipped
    synthetic = {"name": GLOBAL_MODEL, "dim": G, "fingerprint": "synthetic"}
    assert result.global_encoder == synthetic and "global features: " + GLOBAL_MODEL in result.summary()
    data = open_dataset(tmp_path / "data")
    assert data.global_encoder == synthetic
    for identity, row in _all_rows(data).items():
        expected = _file_embedding(synth_global / identity / "global.safetensors")
        assert torch.allclose(row, expected / expected.norm(), atol=1e-6)
    entry = json.loads((tmp_path / "data" / "manifest.json").read_text())["identities"][0]
    assert f"{entry['id']}/global.safetensors" in {s["file"] for s in entry["sources"]}
    assert build_dataset(synth_global, tmp_path / "data", heldout=0.34, progress=False).reused == 6


def test_global_files_for_some_identities_only_is_an_error(synth_global, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_global, src)
    (src / "id-00002" / "global.safetensors").unlink()
    with pytest.raises(HypernetError, match="5 of 6 identity folders hold global.safetensors.*id-00002"):
        build_dataset(src, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_global_files_of_another_encoder_or_shape_are_skipped(synth_global, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_global, src)
    save_file({"embedding": torch.randn(G)}, str(src / "id-00001" / "global.safetensors"), {"embedding_model": "ViT-X"})
    save_file({"embedding": torch.randn(2, G + 1)}, str(src / "id-00003" / "global.safetensors"),
              {"embedding_model": GLOBAL_MODEL})
    result = build_dataset(src, tmp_path / "data", heldout=0.0, progress=False)
    kinds = {s["id"]: s["kind"] for s in result.skipped}
    assert kinds == {"id-00001": "global features from another encoder", "id-00003": "global features from another encoder"}
    assert len(result.kept) == 4


def _photos(src: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (48 + 8 * k, 72, 3), dtype=np.uint8)).save(folder / f"photo{k}.png")


def test_cli_computes_global_features_from_photos_with_the_open_clip_encoder(synth_global, clip_file, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(synth_global, src)
    for f in src.glob("*/global.safetensors"):  # computed features replace the files
        f.unlink()
    _photos(src)
    assert main(["dataset", "--src", str(src), "--out", str(tmp_path / "data"), "--heldout", "0.34",
                 "--global-encoder", str(clip_file), "--global-arch", TINY_ARCH]) == 0
    assert f"global features: {TINY_ARCH} ({TINY_DIM}-d" in capsys.readouterr().out
    data = open_dataset(tmp_path / "data")
    assert data.global_encoder == tiny_encoder_info()
    encoder = GlobalImageEncoder.load(clip_file, TINY_ARCH)
    for identity, row in _all_rows(data).items():
        per_photo = torch.stack([encoder.encode_file(src / identity / f"photo{k}.png") for k in range(2)])
        mean = per_photo.mean(0)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-5)
    # face embeddings still come from embedding.safetensors, not from the photos
    for identity, row in _all_rows(data, global_features=False).items():
        face = _file_embedding(src / identity / "embedding.safetensors")
        assert torch.allclose(row, face / face.norm(), atol=1e-6)


def test_cli_needs_both_encoder_options_and_reports_a_bad_encoder(synth_global, clip_file, tmp_path, capsys):
    assert main(["dataset", "--src", str(synth_global), "--out", str(tmp_path / "d"),
                 "--global-encoder", str(clip_file)]) == 1
    assert "--global-arch" in capsys.readouterr().err
    assert main(["dataset", "--src", str(synth_global), "--out", str(tmp_path / "d"),
                 "--global-encoder", str(clip_file), "--global-arch", "ViT-B-32"]) == 1
    assert "does not hold ViT-B-32" in capsys.readouterr().err
