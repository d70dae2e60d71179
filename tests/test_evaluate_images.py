"""python -m hypernet evaluate-images: identity similarity of what a base model draws with each
method's LoRA. The scoring on cases with known answers; the whole command on the miniature's
glyph model (random weights) with a real recognition model in aligned-crop mode, and on the
tiny SDXL stand-in checkpoint with face detection; its refusals of mismatched inputs."""
import importlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_support
from face_models import synthetic_photo, write_face_models
from hypernet.cli import main
from hypernet.lora.lora_io import lora_from_state_dict, read_lora, write_lora
from hypernet.lora.presets import preset
from hypernet.pipeline.identity_scores import (MethodScores, format_table, gap_closed, identity_similarity,
                                               paired_difference,
                                               reference_calibration, report)
from hypernet.pipeline.lora_baselines import mean_lora
from random_weights import random_kohya_state

LAYOUT = "tiny-attn-r4"
CHARSET = "ABCDEFGHIJabcdefg012"  # 20 glyphs: two specimen sheets of up to 16
FAST = ["--sample-steps", "4", "--seeds", "0", "--prompts", "A", "b", "--threads", "1", "--quiet"]


# --- scoring: known answers, no ComfyUI -----------------------------------------------------------

def test_identical_images_score_one_and_orthogonal_ones_zero():
    e = torch.eye(4, dtype=torch.float64)
    assert identity_similarity(e[:1] * 3.0, e[:1]) == pytest.approx(1.0)
    assert identity_similarity(e[:1], e[1:3]) == pytest.approx(0.0)
    # every generated image against every reference: (1 + 0) / 2
    assert identity_similarity(e[:1], e[:2]) == pytest.approx(0.5)


def test_calibration_pairs_each_reference_only_with_the_others():
    e = torch.eye(3, dtype=torch.float64)
    same = torch.stack([e[0], e[0], e[1]])  # cosines of the distinct pairs: 1, 0, 0
    assert reference_calibration(same) == pytest.approx(1 / 3)
    assert reference_calibration(e) == pytest.approx(0.0)  # the diagonal (a reference with itself) never counts
    assert reference_calibration(e[:1]) is None


def test_method_rows_standard_error_gap_closed_and_table():
    base = MethodScores("base", {"a": 0.2, "b": 0.2}, {"a": 0.0, "b": 0.0})
    hyper = MethodScores("hypernet", {"a": 0.4, "b": 0.6}, {"a": 0.5, "b": 1.5})
    upper = MethodScores("trained", {"a": 0.6, "b": 0.6}, {"a": 100.0, "b": 300.0})
    assert hyper.mean == pytest.approx(0.5) and hyper.sem == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    assert gap_closed(hyper, base, upper) == pytest.approx(0.75)
    assert gap_closed(hyper, base, MethodScores("trained", {"a": 0.2})) is None  # no gap to close
    calibration = MethodScores("calibration", {"a": 0.45, "b": 0.47})
    numbers = report([base, hyper, upper], calibration, ("hypernet",))
    assert numbers["methods"]["hypernet"]["gap_closed"] == pytest.approx(0.75)
    assert numbers["methods"]["hypernet"]["speedup"] == pytest.approx(200.0)
    assert numbers["methods"]["hypernet"]["seconds_per_identity"] == pytest.approx(1.0)
    assert "gap_closed" not in numbers["methods"]["base"]
    assert numbers["calibration"]["mean"] == pytest.approx(0.46)
    table = format_table(numbers)
    assert "| hypernet | 0.500 | 0.100 | 1 | 75 % |" in table
    assert "same identity, other reference" in table


def test_paired_difference_cancels_the_spread_between_identities():
    # identities far apart, the first method a steady 0.01-0.03 above the second on each
    first = {"a": 0.91, "b": 0.52, "c": -0.28, "d": 0.10}
    second = {"a": 0.90, "b": 0.50, "c": -0.30, "d": 0.07, "only-here": 5.0}
    d = paired_difference(first, second)
    assert d["identities"] == 4 and d["ahead"] == 4
    assert d["mean"] == pytest.approx(0.02)
    assert d["sem"] == pytest.approx(0.00408, abs=1e-5)  # sd of (0.01, 0.02, 0.02, 0.03) / 2
    assert MethodScores("first", first).sem > 0.2  # the unpaired error would hide the difference
    assert paired_difference({"a": 1.0}, {"b": 1.0}) is None


def test_mean_lora_is_the_exact_mean_update(tmp_path):
    layout = preset(LAYOUT)
    files = []
    for seed in range(3):
        files.append(tmp_path / f"{seed}.safetensors")
        write_lora(files[-1], lora_from_state_dict(random_kohya_state(layout, seed=seed)), base_model="sdxl")
    mean = mean_lora(files)
    loras = [read_lora(f) for f in files]
    for name in list(layout.names)[:5]:
        expected = sum(lora[name].delta().double() for lora in loras) / 3
        assert torch.allclose(mean[name].delta().double(), expected, atol=1e-5)
        assert mean[name].rank <= 3 * layout[name].rank


# --- the command on the glyph model ---------------------------------------------------------------

def styled_glyphs(style: int) -> np.ndarray:
    """Three "typefaces" of Pillow's embedded font: regular, bold (dilated), italic (sheared)."""
    from glyph_support import pillow_glyphs
    t = pillow_glyphs(CHARSET, 16).float()[:, None]
    if style == 1:
        t = torch.nn.functional.max_pool2d(t, 3, 1, 1)
    if style == 2:
        t = torch.stack([torch.roll(t[:, :, r], shifts=(8 - r) // 4, dims=-1) for r in range(t.shape[2])], 2)
    return t[:, 0].clamp(0, 255).to(torch.uint8).numpy()


def write_identity(folder, glyphs, chars=CHARSET):
    folder.mkdir(parents=True, exist_ok=True)
    for char, glyph in zip(chars, glyphs):
        Image.fromarray(glyph).save(folder / f"{ord(char):04x}.png")
        (folder / f"{ord(char):04x}.txt").write_text(char)


def trainable_glyph_model(path, seed=0):
    from glyph_support import trainable_glyph_model as write
    return write(path, CHARSET, seed)


@pytest.fixture(scope="module")
def glyph_case(comfy, tmp_path_factory, monkeypatch_module):
    """Glyph model, a recognition-only model folder (aligned crops), three held-out "typefaces",
    a tiny hypernet for that embedding model and its synthetic collection as training identities."""
    import demo_assets
    monkeypatch_module.setenv("COMFYUI_PATH", str(comfy_support.COMFYUI_PATH))
    root = tmp_path_factory.mktemp("evaluate_images")
    faces = write_face_models(root / "insightface" / "glyph_rec")
    faces["detector"].unlink()
    heldout = root / "heldout"
    for style in range(3):
        write_identity(heldout / f"font{style}", styled_glyphs(style))
    name = demo_assets.face_model_name(faces["folder"])
    hypernet = demo_assets.train_tiny_hypernet(root / "hypernet", name, identities=24)
    return dict(root=root, base=trainable_glyph_model(root / "glyph.safetensors"), embedding=faces["folder"],
                heldout=heldout, hypernet=hypernet, collection=root / "hypernet" / "collection")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def glyph_args(case, *extra):
    return ["evaluate-images", "--base", str(case["base"]), "--identities", str(case["heldout"]),
            "--embedding-model", str(case["embedding"]), "--aligned-crops", *FAST, *extra]


def test_every_method_runs_end_to_end(glyph_case, tmp_path, capsys):
    case = glyph_case
    loras = tmp_path / "loras"
    loras.mkdir()
    for i, identity in enumerate(sorted(p.name for p in case["heldout"].iterdir())):
        write_lora(loras / f"{identity}.safetensors", lora_from_state_dict(random_kohya_state(preset(LAYOUT), seed=i)),
                   base_model="sdxl")
    out, grid = tmp_path / "scores.json", tmp_path / "grid.png"
    code = main(glyph_args(case, "--hypernet", str(case["hypernet"]), "--train-collection", str(case["collection"]),
                           "--refine-steps", "2", "--train-steps", "2", "--lora-dir", f"random={loras}",
                           "--json", str(out), "--grid", str(grid)))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    numbers = json.loads(out.read_text())
    methods = numbers["methods"]
    assert list(methods) == ["base", "nearest", "mean", "hypernet", "hypernet+refine2", "trained", "random"]
    for name, row in methods.items():
        assert set(row["per_identity"]) == {"font0", "font1", "font2"}, name
        assert all(-1.0 <= s <= 1.0 for s in row["per_identity"].values())
        assert row["sem"] is not None
    assert methods["base"]["seconds_per_identity"] == 0.0
    for name in ("nearest", "mean", "hypernet", "hypernet+refine2", "trained"):
        assert methods[name]["seconds_per_identity"] > 0, name
    assert methods["hypernet+refine2"]["seconds_per_identity"] > methods["hypernet"]["seconds_per_identity"]
    assert set(methods["nearest"]["sources"].values()) <= {p.name for p in case["collection"].iterdir()}
    assert "gap_closed" in methods["hypernet"] and "gap_closed" in methods["hypernet+refine2"]
    assert "gap_closed" not in methods["nearest"]
    assert methods["random"]["seconds_per_identity"] is None  # made elsewhere, time unknown
    # 20 reference glyphs per identity are two specimen sheets: the calibration row compares them
    assert set(numbers["calibration"]["per_identity"]) == {"font0", "font1", "font2"}
    assert numbers["heldout_identities"] == 3 and numbers["prompts"] == ["A", "b"] and numbers["seeds"] == [0]
    assert "| hypernet |" in printed.out and "same identity, other reference" in printed.out
    picture = Image.open(grid)
    assert picture.height > 3 * 64 and picture.width > 8 * 64  # 3 identities; references + 7 methods


@pytest.fixture(scope="module")
def glyph_renderer(glyph_case):
    from hypernet.cli.evaluate_images import load_renderer_package
    from hypernet.pipeline.evaluate_images import Embedder
    package = load_renderer_package()
    renderer = package.Renderer(glyph_case["base"], package.DrawSettings(steps=4))
    return renderer, Embedder(glyph_case["embedding"], True, renderer.embedding_views)


def test_same_seed_same_images_and_a_lora_changes_images_and_scores(glyph_renderer, glyph_case):
    renderer, embedder = glyph_renderer
    prompts = list("AbC0")
    first, again = (renderer.draw(None, prompts, [3]) for _ in range(2))
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, renderer.draw(None, prompts, [4]))
    lora = lora_from_state_dict(random_kohya_state(preset(LAYOUT), seed=1, scale=0.5))
    patched = renderer.draw(lora, prompts, [3])
    assert np.array_equal(patched, renderer.draw(lora, prompts, [3]))
    assert np.abs(patched.astype(int) - first.astype(int)).mean() > 1.0
    assert np.array_equal(renderer.draw(None, prompts, [3]), first)  # the base MODEL was never changed
    references = embedder.embed_references(sorted((glyph_case["heldout"] / "font0").glob("*.png")))
    base_score = identity_similarity(np.stack(embedder.embed_generated(first)[0]), references)
    lora_score = identity_similarity(np.stack(embedder.embed_generated(patched)[0]), references)
    assert abs(base_score - lora_score) > 1e-3


def test_drawings_are_what_the_stock_ksampler_draws(glyph_renderer, glyph_case):
    """The same seed through ComfyUI's own KSampler node and VAE Decode, as in a graph with
    Load Glyph Model + Glyph Prompt, gives the same glyphs."""
    import nodes as comfy_nodes
    from miniature.comfy_glyph import empty_glyph_latent, glyph_conditioning
    renderer, _ = glyph_renderer
    lora = lora_from_state_dict(random_kohya_state(preset(LAYOUT), seed=2, scale=0.5))
    model = renderer.patched(lora)
    positive, negative = glyph_conditioning(renderer.base.text, "Ab0")
    (latent,) = comfy_nodes.KSampler().sample(model, 5, 4, 3.0, "euler", "normal", positive, negative,
                                              empty_glyph_latent(3, 16))
    (image,) = comfy_nodes.VAEDecode().decode(renderer.base.vae, latent)
    stock = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(renderer.draw(lora, list("Ab0"), [5]), stock)


def test_references_as_generated_images_score_their_calibration(glyph_renderer, glyph_case):
    """Scoring through the command's own path: an identity's references, drawn as if generated,
    score exactly the mean over all sheet pairs (1 on the diagonal)."""
    renderer, embedder = glyph_renderer
    photos = sorted((glyph_case["heldout"] / "font1").glob("*.png"))
    references = embedder.embed_references(photos)
    glyphs = np.stack([np.repeat(np.asarray(Image.open(p))[:, :, None], 3, axis=2) for p in photos])
    found, missing = embedder.embed_generated(glyphs)
    assert missing == 0 and len(found) == len(references) == 2
    calibration = reference_calibration(references)
    assert identity_similarity(np.stack(found), references) == pytest.approx((2 + 2 * calibration) / 4, abs=1e-6)


def test_a_lora_for_another_layout_is_refused(glyph_case, tmp_path, capsys):
    other = tmp_path / "sd15"
    other.mkdir()
    for identity in ("font0", "font1", "font2"):
        write_lora(other / f"{identity}.safetensors",
                   lora_from_state_dict(random_kohya_state(preset("tiny-sd15-w2w"))), base_model="sd15")
    assert main(glyph_args(glyph_case, "--methods", "base", "--lora-dir", f"sd15={other}")) == 1
    err = capsys.readouterr().err
    assert "the sd15 LoRA of font0 does not fit the base model glyph.safetensors" in err
    assert "do not exist in the model" in err


def test_an_identity_without_references_is_refused(glyph_case, tmp_path, capsys):
    heldout = tmp_path / "heldout"
    shutil.copytree(glyph_case["heldout"] / "font0", heldout / "font0")
    (heldout / "empty").mkdir()
    args = glyph_args(glyph_case, "--methods", "base")
    args[args.index("--identities") + 1] = str(heldout)
    assert main(args) == 1
    assert "held-out identity empty has no reference images" in capsys.readouterr().err


def test_an_embedding_model_other_than_the_hypernets_is_refused(glyph_case, tmp_path, capsys):
    other = shutil.copytree(glyph_case["embedding"], tmp_path / "other_rec")
    args = glyph_args(glyph_case, "--methods", "base,hypernet", "--hypernet", str(glyph_case["hypernet"]))
    args[args.index("--embedding-model") + 1] = str(other)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "was trained on 'insightface/glyph_rec/" in err and "gives 'insightface/other_rec/" in err


def test_a_glyph_caption_the_model_cannot_draw_is_refused(glyph_case, tmp_path, capsys):
    heldout = tmp_path / "heldout"
    write_identity(heldout / "odd", styled_glyphs(0)[:2], chars="A%")
    args = glyph_args(glyph_case, "--methods", "base")
    args[args.index("--identities") + 1] = str(heldout)
    assert main(args) == 1
    assert "draws one character per prompt" in capsys.readouterr().err


# --- the command on the tiny SDXL stand-in checkpoint, with face detection ------------------------

def test_checkpoint_base_with_face_detection(comfy, tmp_path, capsys, monkeypatch):
    """The real-scale path (a checkpoint through comfy.sd.load_checkpoint_guess_config, photos
    through the face detector) on the marked tiny SDXL stand-in, with a LoRA trained here."""
    importlib.import_module("fixture_nodes")  # marked stand-in checkpoints load as the tiny models
    monkeypatch.setenv("COMFYUI_PATH", str(comfy_support.COMFYUI_PATH))
    ckpt = tmp_path / "tiny.safetensors"
    comfy_support.write_tiny_checkpoint(ckpt, comfy_support.TINY_TRAINABLE_CHECKPOINT_MARK)
    faces = write_face_models(tmp_path / "insightface" / "antelopev2")
    for person in (1, 2):
        folder = tmp_path / "people" / f"person{person}"
        folder.mkdir(parents=True)
        for shot in range(2):
            Image.fromarray(synthetic_photo(96, 96, [(20 + 4 * shot, 18, 48, person)], seed=shot)).save(folder / f"{shot}.png")
    out = tmp_path / "scores.json"
    code = main(["evaluate-images", "--base", str(ckpt), "--identities", str(tmp_path / "people"),
                 "--embedding-model", str(faces["folder"]), "--methods", "base,trained", "--layout", LAYOUT,
                 "--train-steps", "2", "--resolution", "64", "--sample-steps", "3", "--seeds", "0", "1",
                 "--threads", "1", "--quiet", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    numbers = json.loads(out.read_text())
    assert numbers["prompts"] == ["a photo of sks person"] and numbers["aligned_crops"] is False
    for row in numbers["methods"].values():
        assert set(row["per_identity"]) == {"person1", "person2"}
    # two photos of one synthetic person: the generated recogniser sees the same texture
    assert numbers["calibration"]["mean"] > 0.9


def test_a_drawn_image_without_a_face_scores_zero(tmp_path):
    from hypernet.pipeline.evaluate_images import Embedder
    faces = write_face_models(tmp_path / "antelopev2")
    embedder = Embedder(faces["folder"], aligned_crops=False)
    photo = synthetic_photo(96, 96, [(24, 20, 48, 1)])
    found, missing = embedder.embed_generated(np.stack([photo, np.zeros_like(photo)]))
    assert len(found) == 1 and missing == 1
    reference = embedder.embed_references([_save(tmp_path / "ref.png", photo)])
    assert identity_similarity(np.stack(found), reference) == pytest.approx(1.0, abs=1e-5)


def _save(path, image):
    Image.fromarray(image).save(path)
    return path


def test_a_recognition_only_model_needs_aligned_crops(glyph_case, capsys):
    args = [a for a in glyph_args(glyph_case, "--methods", "base") if a != "--aligned-crops"]
    assert main(args) == 1
    assert "holds only a recognition model" in capsys.readouterr().err
