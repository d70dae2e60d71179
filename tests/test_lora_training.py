"""The LoRA trainer (lora_training) on the tiny SDXL model, through ComfyUI's real loading,
model management, weight adapters and stock LoraLoader."""
import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_support
from hypernet.errors import HypernetError
from hypernet.lora.layout import attention_layout
from hypernet.lora.presets import preset, unet_attention_shapes
from random_weights import random_kohya_state

LAYOUT = "tiny-attn-r4"
FAST = dict(steps=40, learning_rate=1e-2, resolution=64)


@pytest.fixture(scope="module")
def lt(comfy):
    importlib.import_module("fixture_nodes")  # marked stand-in checkpoints load as the tiny models
    import lora_training
    return lora_training


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    comfy_support.write_tiny_checkpoint(path, comfy_support.TINY_TRAINABLE_CHECKPOINT_MARK)
    return path


def write_photos(folder, count, seed=0, size=80):
    """Smooth random colour fields: distinct per seed, like photos of one person differ."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        paths.append(folder / f"{i}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("person"), 3)


@pytest.fixture(scope="module")
def trainer(lt, checkpoint):
    return lt.IdentityTrainer(checkpoint, preset(LAYOUT), lt.TrainingSettings(**FAST))


def layout_keys(layout):
    return {f"{m.name}.{part}" for m in layout for part in ("lora_up.weight", "lora_down.weight", "alpha")}


def assert_model_clean(comfy, model, before):
    """No adapter left on the MODEL's layers, no patch added, its own weights."""
    assert not model.patches
    assert not model.weight_wrapper_patches
    for name, layer in model.model.named_modules():
        assert not getattr(layer, "weight_function", []), name
    weights = comfy_support.patched_weights(comfy, model)
    assert all(torch.equal(weights[k], before[k]) for k in before)


@pytest.fixture(scope="module")
def trained(trainer, photos):
    return trainer.train(photos, None, seed=3)


def test_identity_lora_lowers_its_own_loss_against_the_base_model(trained):
    # Same images, noise and timesteps for both numbers; a fresh LoRA starts as the base model.
    assert trained.initial_loss == pytest.approx(trained.base_loss, rel=1e-6)
    assert trained.loss < 0.93 * trained.base_loss, (trained.loss, trained.base_loss)
    assert trained.steps == FAST["steps"] and len(trained.train_losses) == FAST["steps"]
    assert trained.seconds > 0
    assert set(trained.record()) == {"loss", "base_loss", "initial_loss", "steps", "seconds"}


def test_result_has_exactly_the_layouts_keys_and_loads_in_the_stock_lora_loader(comfy, trainer, trained, loras_dir):
    import nodes as comfy_nodes
    from safetensors.torch import save_file

    layout = preset(LAYOUT)
    assert set(trained.state_dict) == layout_keys(layout)
    for m in layout:
        assert trained.state_dict[f"{m.name}.lora_up.weight"].shape == (m.out_features, m.rank)
        assert trained.state_dict[f"{m.name}.lora_down.weight"].shape == (m.rank, m.in_features)
        assert float(trained.state_dict[f"{m.name}.alpha"]) == m.alpha
    save_file(trained.state_dict, str(loras_dir / "person.safetensors"))
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(trainer.model, "person.safetensors", 1.0)
    assert len(patched.patches) == len(layout)
    base = comfy_support.patched_weights(comfy, trainer.model)
    after = comfy_support.patched_weights(comfy, patched)
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    key_map = comfy.lora.model_lora_keys_unet(trainer.model.model, {})
    assert changed == {key_map[m.name] for m in layout}


def test_training_leaves_the_base_model_unchanged(comfy, trainer, photos):
    before = {k: v.clone() for k, v in trainer.model.model.state_dict().items()}
    trainer.train(photos[:1], None, seed=1)
    assert_model_clean(comfy, trainer.model, before)


def test_same_seed_same_lora_other_seed_other_lora(lt, checkpoint, photos):
    settings = lt.TrainingSettings(steps=3, learning_rate=1e-2, resolution=64, seed=5)
    quick = lt.IdentityTrainer(checkpoint, preset(LAYOUT), settings)
    first, again, other = quick.train(photos, None), quick.train(photos, None, seed=5), quick.train(photos, None, seed=6)
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert first.loss == again.loss
    assert any(not torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)


def test_captions_and_prior_preservation_images_are_used(lt, checkpoint, photos, tmp_path):
    class_photos = write_photos(tmp_path / "class", 2, seed=9)
    settings = lt.TrainingSettings(steps=3, learning_rate=1e-2, resolution=64, class_images=tuple(class_photos))
    with_prior = lt.IdentityTrainer(checkpoint, preset(LAYOUT), settings)
    plain = lt.IdentityTrainer(checkpoint, preset(LAYOUT), lt.TrainingSettings(steps=3, learning_rate=1e-2, resolution=64))
    a = with_prior.train(photos, None, seed=2)
    b = plain.train(photos, None, seed=2)
    c = plain.train(photos, ["a photo of zxq person"] * len(photos), seed=2)
    assert any(not torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert c.base_loss != b.base_loss  # another caption is another condition


def test_refine_from_a_given_lora_lowers_the_reference_loss(comfy, lt, trainer, photos):
    layout = preset(LAYOUT)
    start = random_kohya_state(layout, seed=4, scale=0.1)
    result = trainer.train(photos, None, seed=0, init_lora=start)
    assert result.initial_loss != pytest.approx(result.base_loss, rel=1e-6)  # the start is not the base model
    assert result.loss < 0.95 * result.initial_loss, (result.loss, result.initial_loss)
    assert set(result.state_dict) == layout_keys(layout)


def test_cancel_raises_comfyuis_interrupt_and_leaves_the_model_unpatched(comfy, trainer, photos):
    mm = comfy.model_management
    before = {k: v.clone() for k, v in trainer.model.model.state_dict().items()}
    seen = []

    def press_cancel_at_step_2(done, total):
        seen.append(done)
        if done == 2:
            mm.interrupt_current_processing(True)

    try:
        with pytest.raises(mm.InterruptProcessingException):
            trainer.train(photos, None, seed=0, progress=press_cancel_at_step_2)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [1, 2]
    assert_model_clean(comfy, trainer.model, before)


def test_should_stop_stops_with_training_stopped(comfy, lt, trainer, photos):
    calls = []
    with pytest.raises(lt.TrainingStopped, match="after 1 of 40 steps"):
        trainer.train(photos, None, seed=0, should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert not any(getattr(m, "weight_function", []) for m in trainer.model.model.modules())


def test_bad_input_gets_a_clear_error(lt, checkpoint, trainer, photos, tmp_path):
    q_only = attention_layout(unet_attention_shapes("tiny-sdxl"), rank=4, projections=("q",))
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(HypernetError, match=r"broken.png cannot be read as an image"):
        trainer.train([photos[0], broken], None, seed=0)
    with pytest.raises(HypernetError, match=r"missing.png does not exist"):
        trainer.train([tmp_path / "missing.png"], None, seed=0)
    with pytest.raises(HypernetError, match="no training images"):
        trainer.train([], None, seed=0)
    with pytest.raises(HypernetError, match="2 images but 1 captions"):
        trainer.train(photos[:2], ["a photo of sks person"], seed=0)
    with pytest.raises(HypernetError, match="starting LoRA does not match the layout"):
        trainer.train(photos, None, seed=0, init_lora=random_kohya_state(q_only))
    with pytest.raises(HypernetError, match="does not fit this MODEL"):
        lt.IdentityTrainer(checkpoint, preset("tiny-sd15-w2w"), lt.TrainingSettings(**FAST))
    with pytest.raises(HypernetError, match="base checkpoint .*nothing.safetensors does not exist"):
        lt.IdentityTrainer(tmp_path / "nothing.safetensors", preset(LAYOUT))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(HypernetError, match="base checkpoint .*truncated.safetensors cannot be loaded by ComfyUI"):
        lt.IdentityTrainer(truncated, preset(LAYOUT))
    with pytest.raises(HypernetError, match="resolution must be a multiple of 64"):
        lt.TrainingSettings(resolution=100)
    with pytest.raises(HypernetError, match="must contain {token}"):
        lt.TrainingSettings(caption_template="a photo of a person")


def test_start_comfyui_names_what_is_wrong(lt, tmp_path, monkeypatch):
    with pytest.raises(HypernetError, match="is no ComfyUI folder"):
        lt.find_comfyui(tmp_path)
    monkeypatch.setenv("COMFYUI_PATH", str(comfy_support.COMFYUI_PATH))
    assert lt.find_comfyui() == comfy_support.COMFYUI_PATH
    assert lt.start_comfyui() == comfy_support.COMFYUI_PATH  # already imported here: same folder is fine
