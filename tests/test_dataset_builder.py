"""Building a dataset from identity folders: photos or embeddings, bad folders, resuming, the CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hypernet.cli import main
from hypernet.data.dataset import open_dataset
from hypernet.data.builder import build_dataset
from hypernet.errors import HypernetError
from hypernet.lora.presets import preset
from hypernet.lora.lora_io import read_lora, write_lora
from hypernet.data.synth import write_synth
from hypernet.lora.vectorize import flatten

TINY = preset("tiny-attn-r4")


class FakeFaceEmbedder:
    """Test double of hypernet.encoders.face.ArcFaceEmbedder: a 'photo' is a text file saying what it shows."""

    name = "fake-arcface"

    def __init__(self):
        self.calls = 0

    def embed_file(self, path: Path) -> np.ndarray:
        self.calls += 1
        text = Path(path).read_text()
        if text.startswith("unreadable"):
            raise OSError(f"cannot decode image {path}")
        if not text.startswith("face:"):
            raise HypernetError(f"No face detected in {path}")
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(512).astype(np.float32) * 3


@pytest.fixture(scope="module")
def synth_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("synth")
    write_synth(src, TINY, 6, progress=False)
    return src


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    return dst


def test_dataset_from_embedding_files_holds_canonical_vectors(synth_src, tmp_path):
    result = build_dataset(synth_src, tmp_path / "data", heldout=0.34, seed=0, progress=False)
    assert result.skipped == [] and len(result.kept) == 6 and result.layout == TINY
    data = open_dataset(tmp_path / "data")
    assert data.embedding_model == "synthetic-uniform-sphere-512"
    assert len(data.ids("heldout")) == 2
    vectors, embeddings, ids = data.load("train")
    for row, identity in enumerate(ids):
        expected = flatten(read_lora(synth_src / identity / "lora.safetensors"), TINY)
        assert torch.allclose(vectors[row], expected)
        assert abs(float(embeddings[row].norm()) - 1) < 1e-5
    entry = json.loads((tmp_path / "data" / "manifest.json").read_text())["identities"][0]
    lora_bytes = (synth_src / entry["id"] / "lora.safetensors").read_bytes()
    assert entry["lora_file"] == f"{entry['id']}/lora.safetensors"
    assert entry["lora_sha256"] == hashlib.sha256(lora_bytes).hexdigest()
    assert {s["file"] for s in entry["sources"]} == {entry["lora_file"], f"{entry['id']}/embedding.safetensors"}
    # the layout taken from the first LoRA is the same on a re-run, so every cache is reused
    assert build_dataset(synth_src, tmp_path / "data", heldout=0.34, seed=0, progress=False).reused == 6


def test_bad_folders_are_skipped_with_reasons(synth_src, tmp_path):
    src = _copy(synth_src, tmp_path)
    (src / "id-00000" / "lora.safetensors").unlink()  # no LoRA
    shutil.copy(src / "id-00002" / "lora.safetensors", src / "id-00001" / "second.safetensors")  # two LoRAs
    nan = read_lora(src / "id-00002" / "lora.safetensors")
    next(iter(nan.values())).up[0, 0] = float("nan")
    write_lora(src / "id-00002" / "lora.safetensors", nan, base_model="sdxl")
    qv = read_lora(src / "id-00003" / "lora.safetensors")  # another layout: q and v only
    write_lora(src / "id-00003" / "lora.safetensors", type(qv)({k: v for k, v in qv.items() if "to_q" in k}), base_model="sdxl")
    save_file({"embedding": torch.randn(3, 128)}, str(src / "id-00004" / "embedding.safetensors"))  # wrong size
    result = build_dataset(src, tmp_path / "data", heldout=0.0, layout=TINY, progress=False)
    kinds = {s["id"]: s["kind"] for s in result.skipped}
    assert kinds == {"id-00000": "no LoRA file", "id-00001": "more than one LoRA file",
                     "id-00002": "unreadable or broken LoRA", "id-00003": "LoRA of another layout",
                     "id-00004": "bad embedding file"}
    assert result.kept == ["id-00005"]
    reasons = {s["id"]: s["reason"] for s in open_dataset(tmp_path / "data").skipped}
    assert "NaN" in reasons["id-00002"] and "missing" in reasons["id-00003"] and "[3, 128]" in reasons["id-00004"]
    assert "skipped 1: no LoRA file" in result.summary()


def _photo_folder(src: Path, name: str, lora: Path, photos: dict[str, str]) -> None:
    folder = src / name
    folder.mkdir(parents=True)
    shutil.copy(lora, folder / "person.safetensors")
    for file, text in photos.items():
        (folder / file).write_text(text)


def test_photos_are_embedded_averaged_and_faceless_folders_skipped(synth_src, tmp_path):
    src = tmp_path / "src"
    lora = synth_src / "id-00000" / "lora.safetensors"
    _photo_folder(src, "alice", lora, {"a.jpg": "face:alice-1", "b.png": "face:alice-2"})
    _photo_folder(src, "bob", lora, {"a.jpg": "face:bob"})
    _photo_folder(src, "carol", lora, {"a.jpg": "face:carol", "b.jpg": "a landscape"})
    _photo_folder(src, "dave", lora, {"a.jpg": "unreadable"})
    embedder = FakeFaceEmbedder()
    result = build_dataset(src, tmp_path / "data", heldout=0.5, face_embedder=embedder, progress=False)
    assert sorted(result.kept) == ["alice", "bob"] and result.embedding_model == "fake-arcface"
    reasons = {s["id"]: s["reason"] for s in result.skipped}
    assert "photo 2 of 2 (b.jpg)" in reasons["carol"] and "No face" in reasons["carol"]
    assert "cannot decode" in reasons["dave"]
    data = open_dataset(tmp_path / "data")
    by_id = {}
    for split in ("train", "heldout"):
        _, embeddings, ids = data.load(split)
        by_id.update(zip(ids, embeddings))
    alice = by_id["alice"]
    one, two = (torch.from_numpy(embedder.embed_file(src / "alice" / f)) for f in ("a.jpg", "b.png"))
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(one, dim=0) + torch.nn.functional.normalize(two, dim=0), dim=0)
    assert torch.allclose(alice, expected, atol=1e-6)


def test_photos_without_face_model_is_a_clear_error_and_factory_is_lazy(synth_src, tmp_path):
    src = _copy(synth_src, tmp_path)
    (src / "id-00003" / "embedding.safetensors").unlink()
    (src / "id-00003" / "me.jpg").write_text("face:x")
    with pytest.raises(HypernetError, match="--face-model"):
        build_dataset(src, tmp_path / "data", progress=False)

    def no_model_needed():
        raise AssertionError("the face model must not be built when no folder needs it")
    result = build_dataset(synth_src, tmp_path / "data2", face_embedder=no_model_needed, progress=False)
    assert len(result.kept) == 6


def test_rerun_reuses_unchanged_identities_and_redoes_changed_ones(synth_src, tmp_path):
    src = _copy(synth_src, tmp_path)
    first = build_dataset(src, tmp_path / "data", heldout=0.2, layout=TINY, progress=False)
    assert first.reused == 0
    again = build_dataset(src, tmp_path / "data", heldout=0.2, layout=TINY, progress=False)
    assert again.reused == 6
    changed = read_lora(src / "id-00004" / "lora.safetensors")
    for m in changed.values():
        m.up.mul_(2)
    write_lora(src / "id-00004" / "lora.safetensors", changed, base_model="sdxl")
    third = build_dataset(src, tmp_path / "data", heldout=0.2, layout=TINY, progress=False)
    assert third.reused == 5
    data = open_dataset(tmp_path / "data")
    split = "train" if "id-00004" in data.ids("train") else "heldout"
    vectors, _, ids = data.load(split)
    assert torch.allclose(vectors[ids.index("id-00004")], flatten(changed, TINY))
    # a layout at another rank is another dataset: nothing reused, vectors at rank 2
    fourth = build_dataset(src, tmp_path / "data", heldout=0.2, layout=TINY.with_rank(2), progress=False)
    assert fourth.reused == 0 and open_dataset(tmp_path / "data").layout.num_values == TINY.num_values // 2


def test_nothing_usable_or_too_few_is_an_error(synth_src, tmp_path):
    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    with pytest.raises(HypernetError, match="no identity folder .* could be used"):
        build_dataset(src, tmp_path / "data", progress=False)
    shutil.copytree(synth_src / "id-00000", src / "one")
    with pytest.raises(HypernetError, match="at least 2"):
        build_dataset(src, tmp_path / "data", heldout=0.1, progress=False)
    assert len(build_dataset(src, tmp_path / "data", heldout=0.0, progress=False).kept) == 1


def test_cli_builds_with_a_layout_file_and_reports_errors(synth_src, tmp_path, capsys):
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(TINY.with_rank(3).to_json())
    assert main(["dataset", "--src", str(synth_src), "--out", str(tmp_path / "data"), "--layout", str(layout_file),
                 "--heldout", "0.2"]) == 0
    assert "kept 6 identities" in capsys.readouterr().out
    assert open_dataset(tmp_path / "data").layout == TINY.with_rank(3)
    assert main(["dataset", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d2")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["dataset", "--src", str(synth_src), "--out", str(tmp_path / "d3"), "--layout", "no-such"]) == 1
    assert "neither a layout preset" in capsys.readouterr().err


def test_cli_embeds_photos_with_the_real_face_code(synth_src, tmp_path, capsys):
    from PIL import Image

    from face_models import synthetic_photo, write_face_models
    models = write_face_models(tmp_path / "insightface" / "buffalo_l")
    src = tmp_path / "src"
    lora = synth_src / "id-00000" / "lora.safetensors"
    for name, faces in {"ann": [(40, 60, 120, 1)], "ben": [(30, 30, 90, 2)], "cat": []}.items():
        _photo_folder(src, name, lora, {})
        Image.fromarray(synthetic_photo(256, 256, faces)).save(src / name / "photo.png")
    assert main(["dataset", "--src", str(src), "--out", str(tmp_path / "data"), "--heldout", "0.5",
                 "--face-model", str(models["folder"])]) == 0
    out = capsys.readouterr()
    assert "kept 2 identities" in out.out and "skipped cat" in out.out + out.err and "No face" in out.out + out.err
    data = open_dataset(tmp_path / "data")
    assert "w600k_r50" in data.embedding_model
    embeddings = torch.cat([data.load("train")[1], data.load("heldout")[1]])
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2)) and float(embeddings[0] @ embeddings[1]) < 0.5
