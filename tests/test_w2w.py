"""weights2weights files -> identity folders -> dataset -> a few training steps, and the row round trip.

The fixture writes files in exactly weights2weights' format: all_weights.pt, one float32 row per
identity, each the PEFT state dict flattened key by key in the sorted order of its keys, and
weight_dimensions.pt, key -> (torch.Size([numel]), torch.Size(shape)) in that order; identity
folders are numbered "0", "1", ... and rows follow the sorted order of their names.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import w2w_support
from face_models import synthetic_photo, write_face_models
from hypernet.cli import main
from hypernet.data.dataset import open_dataset
from hypernet.data.w2w import DIMENSIONS_FILE, WEIGHTS_FILE, import_w2w, open_rows
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora, write_lora
from hypernet.lora.presets import preset
from hypernet.lora.w2w import W2W_ALPHA, peft_module, row_entries, row_to_lora, to_w2w_row, w2w_dimensions
from hypernet.lora.weights import ModuleWeights

IDENTITIES = 24
LAYOUT = preset("sd15-w2w")


def _rows(count: int) -> torch.Tensor:
    """Rows of the size of trained w2w factors; row i starts with i so a mix-up is visible."""
    rows = torch.randn(count, LAYOUT.num_values, generator=torch.Generator().manual_seed(0)) * 0.02
    rows[:, 0] = torch.arange(count, dtype=torch.float32)
    return rows


def write_w2w_files(folder: Path, rows: torch.Tensor, dimensions=None) -> Path:
    return w2w_support.write_w2w_files(folder, rows, w2w_dimensions(LAYOUT) if dimensions is None else dimensions)


@pytest.fixture(scope="module")
def w2w(tmp_path_factory):
    """(files folder, images folder, rows): IDENTITIES numbered folders with one photo each."""
    root = tmp_path_factory.mktemp("w2w")
    rows = _rows(IDENTITIES)
    images = root / "images"
    for i in range(IDENTITIES):
        (images / str(i)).mkdir(parents=True)
        photo = synthetic_photo(128, 128, [(24, 24, 80, i + 1)], seed=i)
        Image.fromarray(photo).save(images / str(i) / "0.png")
    (images / ".cache").mkdir()  # hidden folders are not identities
    return write_w2w_files(root / "files", rows), images, rows


@pytest.fixture(scope="module")
def imported(w2w, tmp_path_factory):
    files, images, _ = w2w
    out = tmp_path_factory.mktemp("collection")
    result = import_w2w(files, images, out, progress=False)
    return out, result


def _copy_images(images: Path, dest: Path, drop: str | None = None) -> Path:
    shutil.copytree(images, dest, ignore=lambda d, names: [drop] if drop in names else [])
    return dest


# --- the row <-> LoRA conversion ---------------------------------------------------------

def test_a_row_survives_the_kohya_file_bit_for_bit(tmp_path):
    row = _rows(2)[1]
    entries = row_entries(w2w_dimensions(LAYOUT), LAYOUT)
    write_lora(tmp_path / "lora.safetensors", row_to_lora(row, entries), base_model="sd15")
    back = read_lora(tmp_path / "lora.safetensors")
    assert {m.alpha for m in back.values()} == {W2W_ALPHA} and {m.rank for m in back.values()} == {1}
    assert torch.equal(to_w2w_row(back), row)
    assert torch.equal(to_w2w_row(back, [k for k, _ in w2w_dimensions(LAYOUT)]), row)


def test_another_alpha_keeps_delta_w_in_the_row():
    row = _rows(1)[0]
    weights = row_to_lora(row, row_entries(w2w_dimensions(LAYOUT), LAYOUT))
    name = "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v"
    module = weights[name]
    weights._modules[name] = ModuleWeights(module.up * 27, module.down, 1.0)  # same delta W at alpha 1
    back = row_to_lora(to_w2w_row(weights), row_entries(w2w_dimensions(LAYOUT), LAYOUT))
    assert torch.allclose(back[name].delta(), module.delta(), rtol=1e-6, atol=0)


def test_peft_key_spellings_name_the_same_module():
    peft = "base_model.model.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q.lora_B.weight"
    expected = ("lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_q", "up")
    assert peft_module(peft) == expected
    assert peft_module(peft.replace(".lora_B.weight", ".lora_B.identity1.weight")) == expected
    assert peft_module("lora_unet_up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q_lora_B.weight") == expected
    assert peft_module("base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight") is None


# --- importing ---------------------------------------------------------------------------

def test_rows_follow_the_sorted_folder_names(imported, w2w):
    out, result = imported
    _, images, rows = w2w
    names = sorted(str(i) for i in range(IDENTITIES))
    assert names[:4] == ["0", "1", "10", "11"] and result.identities == names
    assert (result.written, result.reused) == (IDENTITIES, 0)
    for index, name in enumerate(names):
        weights = read_lora(out / name / "lora.safetensors")
        assert torch.equal(to_w2w_row(weights), rows[index])
        assert weights.metadata["w2w_row"] == str(index) and weights.metadata["hypernet.base_model"] == "sd15"
    photo = out / "10" / "0.png"
    assert photo.stat().st_ino == (images / "10" / "0.png").stat().st_ino  # hard link, not a copy
    assert not (out / ".cache").exists() and json.loads((out / "w2w_import.json").read_text())["values"] == 99_648


def _w2w_spelling(key: str) -> str:
    """`lora_unet_<diffusers path>_lora_A.weight`: the keys weights2weights' own conversion renames from."""
    path, role = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
    return f"lora_unet_{path}_lora_{role}"


@pytest.mark.parametrize("spelling", [lambda k: k.replace(".weight", ".identity1.weight"), _w2w_spelling],
                         ids=["peft-with-adapter-name", "w2w-lora_unet"])
def test_other_key_spellings_import_the_same_loras(w2w, tmp_path, spelling):
    _, images, rows = w2w
    dims = [(spelling(key), shape) for key, shape in w2w_dimensions(LAYOUT)]
    files = write_w2w_files(tmp_path / "files", rows, dims)
    import_w2w(files, images, tmp_path / "out", progress=False)
    weights = read_lora(tmp_path / "out" / "10" / "lora.safetensors")
    assert torch.equal(to_w2w_row(weights), rows[2]) and torch.equal(to_w2w_row(weights, [k for k, _ in dims]), rows[2])


def test_natural_order_and_copies(w2w, tmp_path):
    files, images, rows = w2w
    result = import_w2w(files, images, tmp_path / "out", order="natural", link=False, progress=False)
    assert result.identities[:3] == ["0", "1", "2"]
    assert torch.equal(to_w2w_row(read_lora(tmp_path / "out" / "10" / "lora.safetensors")), rows[10])
    assert (tmp_path / "out" / "10" / "0.png").stat().st_ino != (images / "10" / "0.png").stat().st_ino


def test_a_rerun_resumes_and_a_foreign_folder_is_refused(w2w, tmp_path):
    files, images, _ = w2w
    out = tmp_path / "out"
    import_w2w(files, images, out, progress=False)
    shutil.rmtree(out / "7")
    (out / ".partial-7").mkdir()  # what an interrupted run leaves
    (out / ".partial-7" / "lora.safetensors").write_bytes(b"half")
    result = import_w2w(files, images, out, progress=False)
    assert (result.written, result.reused) == (1, IDENTITIES - 1) and not (out / ".partial-7").exists()
    shutil.rmtree(out / "3")
    shutil.copytree(out / "4", out / "3")  # folder 4's LoRA is another row than folder 3's
    with pytest.raises(HypernetError, match="is not row"):
        import_w2w(files, images, out, progress=False)


def test_row_count_must_match_the_identity_folders(w2w, tmp_path):
    files, images, _ = w2w
    fewer = _copy_images(images, tmp_path / "images", drop="7")
    with pytest.raises(HypernetError, match="has 24 rows but .* 23 identity folders; no folder for identity 7"):
        import_w2w(files, fewer, tmp_path / "out", progress=False)
    (fewer / "7").mkdir()
    with pytest.raises(HypernetError, match="identity folder .*7 holds no photos"):
        import_w2w(files, fewer, tmp_path / "out", progress=False)
    extra = write_w2w_files(tmp_path / "extra", _rows(IDENTITIES + 1))
    with pytest.raises(HypernetError, match="has 25 rows but"):
        import_w2w(extra, images, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()  # refused before anything was written


def test_dimensions_must_describe_the_w2w_layout(w2w, tmp_path):
    _, images, rows = w2w
    dims = w2w_dimensions(LAYOUT)
    to_k = [(dims[0][0].replace("to_q", "to_k"), dims[0][1])] + dims[1:]
    with pytest.raises(HypernetError, match="to_k.lora_A.weight' is not a module of layout sd15-w2w"):
        import_w2w(write_w2w_files(tmp_path / "k", rows, to_k), images, tmp_path / "o", progress=False)
    with pytest.raises(HypernetError, match="lacks 1 factors"):
        import_w2w(write_w2w_files(tmp_path / "short", rows, dims[:-1]), images, tmp_path / "o", progress=False)
    wrong = tmp_path / "numel"
    write_w2w_files(wrong, rows)
    table = torch.load(wrong / DIMENSIONS_FILE, weights_only=True)
    key = next(iter(table))
    table[key] = (torch.Size([7]), table[key][1])
    torch.save(table, wrong / DIMENSIONS_FILE)
    with pytest.raises(HypernetError, match="has numel 7 but shape"):
        import_w2w(wrong, images, tmp_path / "o", progress=False)
    narrow = write_w2w_files(tmp_path / "narrow", rows[:, :-1])
    with pytest.raises(HypernetError, match="rows of 99,647 values but"):
        import_w2w(narrow, images, tmp_path / "o", progress=False)


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("which", [WEIGHTS_FILE, DIMENSIONS_FILE])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle", "garbage"])
def test_a_hostile_pickle_is_refused_without_running_it(w2w, tmp_path, which, container):
    files, images, _ = w2w
    hostile = tmp_path / "files"
    shutil.copytree(files, hostile)
    marker = tmp_path / "pwned"
    if container == "torch.save":
        torch.save(_Payload(marker), hostile / which)
    elif container == "raw pickle":
        (hostile / which).write_bytes(pickle.dumps(_Payload(marker)))
    else:
        (hostile / which).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(HypernetError, match="restricted loader") as error:
        import_w2w(hostile, images, tmp_path / "out", progress=False)
    assert "\n" not in str(error.value)
    assert not marker.exists() and not (tmp_path / "out").exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickled, it leaves the marker
    assert marker.exists()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_rows_are_memory_mapped_not_read_into_memory(w2w):
    files, _, rows = w2w
    mapped = open_rows(files / WEIGHTS_FILE, LAYOUT.num_values)
    assert str(files / WEIGHTS_FILE) in Path("/proc/self/maps").read_text()
    assert torch.equal(mapped[5], rows[5])


def test_cli_imports_and_reports_errors(w2w, tmp_path, capsys):
    files, images, _ = w2w
    assert main(["import-w2w", "--weights", str(files), "--images", str(images), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert "24 identities (24 written, 0 already there)" in capsys.readouterr().out
    assert main(["import-w2w", "--weights", str(tmp_path), "--images", str(images), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weight_dimensions.pt does not exist" in err


# --- the imported collection is a dataset, and trains with the sd15-w2w preset -------------

def test_dataset_and_training_steps_on_the_imported_collection(imported, tmp_path, capsys):
    out, _ = imported
    models = write_face_models(tmp_path / "insightface" / "buffalo_l")
    data = tmp_path / "data"
    assert main(["dataset", "--src", str(out), "--out", str(data), "--layout", "sd15-w2w", "--heldout", "0.25",
                 "--face-model", str(models["folder"])]) == 0
    assert "kept 24 identities" in capsys.readouterr().out
    dataset = open_dataset(data)
    vectors, embeddings, ids = dataset.load("train")
    assert vectors.shape[1] == 99_648 and len(ids) == 18 and dataset.layout.base_model == "sd15"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "sd15-w2w", "ae_steps": 2, "prior_steps": 2, "ae_batch": 4,
                                  "prior_batch": 4, "warmup_steps": 1, "checkpoint_every": 1}))
    checkpoint = tmp_path / "w2w.safetensors"
    assert main(["train", "--data", str(data), "--out", str(checkpoint), "--config", str(config), "--quiet",
                 "--device", "cpu"]) == 0
    from hypernet.model.checkpoint import load_hypernet
    model = load_hypernet(checkpoint)
    assert model.config.autoencoder.kind == "mlp" and model.config.autoencoder.latent_dim == 512
    assert model.config.diffusion.prediction == "x0" and model.config.prior.conditioning == "adalora"
    assert model.layout.num_values == 99_648
