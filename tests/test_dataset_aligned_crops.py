"""`python -m hypernet dataset --aligned-crops`: identity folders whose photos are aligned crops
(the typeface miniature's specimen sheets), embedded by a recognition-only model folder."""
import shutil

import pytest
import torch
from PIL import Image

from hypernet.cli import main
from hypernet.data.dataset import open_dataset
from hypernet.data.synth import write_synth
from hypernet.lora.presets import preset
from miniature.encoder_onnx import export_recognizer, specimen_sheet
from miniature.glyphs import render_glyphs
from miniature.typeface_encoder import TypefaceEncoder
from font_support import urw_font

FAMILIES = {"c059": "C059-Roman.otf", "sans": "NimbusSans-Regular.otf", "gothic": "URWGothic-Book.otf"}


@pytest.fixture(scope="module")
def typeface_collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("typefaces")
    write_synth(root / "synth", preset("tiny-attn-r4"), 1, progress=False)
    lora = root / "synth" / "id-00000" / "lora.safetensors"
    torch.manual_seed(0)
    export_recognizer(TypefaceEncoder().eval(), root / "insightface" / "typeface")
    for name, font in FAMILIES.items():
        folder = root / "src" / name
        folder.mkdir(parents=True)
        shutil.copy(lora, folder / "lora.safetensors")
        glyphs = render_glyphs(urw_font(font), chars="AaBbEeGgHhQqRr38", size=32).numpy()
        Image.fromarray(specimen_sheet(glyphs)).save(folder / "sheet.png")
    return root


def test_specimen_sheets_are_embedded_whole(typeface_collection, tmp_path, capsys):
    root = typeface_collection
    assert main(["dataset", "--src", str(root / "src"), "--out", str(tmp_path / "data"), "--heldout", "0.34",
                 "--face-model", str(root / "insightface" / "typeface"), "--aligned-crops"]) == 0
    assert "kept 3 identities" in capsys.readouterr().out
    data = open_dataset(tmp_path / "data")
    assert "typeface_arcface" in data.embedding_model
    embeddings = torch.cat([data.load("train")[1], data.load("heldout")[1]])
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_without_the_flag_the_recognition_only_folder_says_what_to_give(typeface_collection, tmp_path, capsys):
    root = typeface_collection
    assert main(["dataset", "--src", str(root / "src"), "--out", str(tmp_path / "data"),
                 "--face-model", str(root / "insightface" / "typeface")]) == 1
    out = capsys.readouterr()
    assert "no face detector" in out.out + out.err and "--aligned-crops" in out.out + out.err
