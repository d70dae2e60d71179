"""The typeface encoder: ArcFace-loss training lowers the loss, glyph sets are order-free and
ignore empty cells, the ONNX recognition model matches the torch encoder."""
import numpy as np
import onnxruntime
import pytest
import torch

from miniature.encoder_cli import load_encoder, save_encoder
from miniature.encoder_onnx import export_recognizer, sheet_input, specimen_sheet
from miniature.encoder_training import heldout_verification, render_families, sample_batch, train_encoder
from miniature.typeface_encoder import EMBEDDING_DIM, ArcFaceLoss, TypefaceEncoder
from font_support import urw_font

FACES = ["C059-Roman.otf", "NimbusSans-Regular.otf", "NimbusRoman-Regular.otf", "P052-Roman.otf",
         "URWGothic-Book.otf", "NimbusMonoPS-Regular.otf"]


@pytest.fixture(scope="module")
def glyphs():
    torch.set_num_threads(1)
    return render_families([(urw_font(f), 0) for f in FACES])


def test_a_few_steps_lower_the_arcface_loss(glyphs):
    result = train_encoder(glyphs, 40, batch=24, per_sample=4, seed=0)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.7 * first, (first, last)
    # The trained encoder tells the six faces apart from glyphs it was shown in other sets.
    assert heldout_verification(result.encoder, glyphs, 8)["top-1 retrieval"] >= 0.8


def test_glyph_sets_are_order_free_and_empty_cells_are_ignored(glyphs):
    torch.manual_seed(0)
    encoder = TypefaceEncoder().eval()
    sets = glyphs[:2, :6].float() / 255
    with torch.no_grad():
        base = encoder(sets)
        shuffled = encoder(sets[:, torch.tensor([5, 3, 1, 0, 2, 4])])
        padded = encoder(torch.cat([sets, torch.zeros(2, 10, 32, 32)], dim=1))
    assert base.shape == (2, EMBEDDING_DIM)
    torch.testing.assert_close(base.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(shuffled, base, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)


def test_arcface_margin_penalises_the_true_class():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, EMBEDDING_DIM), dim=1)
    labels = torch.arange(8) % 3
    with_margin, without = ArcFaceLoss(3, margin=0.3), ArcFaceLoss(3, margin=0.0)
    without.weight.data.copy_(with_margin.weight.data)
    assert with_margin(emb, labels) > without(emb, labels)


def test_batches_hold_distinct_characters_of_one_family(glyphs):
    gen = torch.Generator().manual_seed(1)
    sets, labels = sample_batch(glyphs, 5, 8, gen)
    assert sets.shape == (5, 8, 32, 32) and labels.shape == (5,)
    assert 0 <= float(sets.min()) and float(sets.max()) <= 1


def test_onnx_recognizer_matches_the_torch_encoder(glyphs, tmp_path):
    torch.manual_seed(0)
    encoder = train_encoder(glyphs, 3, batch=8, per_sample=4, seed=1).encoder   # BatchNorm statistics not trivial
    path = export_recognizer(encoder, tmp_path / "typeface")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    full = specimen_sheet(glyphs[0, :16].numpy())
    partial = specimen_sheet(glyphs[3, 10:15].numpy())          # five glyphs, eleven empty cells
    (got,) = session.run(None, {"input.1": sheet_input(np.stack([full, partial])).numpy()})
    with torch.no_grad():
        want = torch.cat([encoder(glyphs[0:1, :16].float() / 255), encoder(glyphs[3:4, 10:15].float() / 255)])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_specimen_sheet_layout_and_limits(glyphs):
    sheet = specimen_sheet(glyphs[0, :5].numpy())
    assert sheet.shape == (128, 128, 3) and sheet.dtype == np.uint8
    np.testing.assert_array_equal(sheet[32:64, 0:32, 0], glyphs[0, 4].numpy())   # row-major cells
    assert sheet[64:].max() == 0
    with pytest.raises(ValueError, match="1 to 16 glyphs"):
        specimen_sheet(glyphs[0, :17].numpy())


def test_saved_weights_load_back(glyphs, tmp_path):
    torch.manual_seed(0)
    encoder = TypefaceEncoder().eval()
    save_encoder(encoder, tmp_path / "enc.safetensors", {"steps": 0})
    again = load_encoder(tmp_path / "enc.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(glyphs[:2, :8].float() / 255), encoder(glyphs[:2, :8].float() / 255))
