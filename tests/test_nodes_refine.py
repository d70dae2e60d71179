"""Refine LoRA on the tiny SDXL model, run as ComfyUI runs nodes (inside torch.inference_mode)."""
import importlib

import pytest
import torch

import comfy_support
from hypernet.lora.lora_io import lora_from_state_dict
from hypernet.lora.presets import preset
from hypernet.pipeline.training import train
from hypernet_support import make_dataset, quick_config
from random_weights import random_kohya_state

LAYOUT = "tiny-attn-r4"


@pytest.fixture(scope="module")
def refine(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.refine_nodes")


@pytest.fixture(scope="module")
def tiny(comfy):
    fixtures = importlib.import_module("fixture_nodes")
    with torch.inference_mode():  # as Load Checkpoint runs in a server: its weights are inference tensors
        model = comfy_support.trainable_tiny_sdxl_patcher(seed=0)
    assert next(model.model.parameters()).is_inference()
    positive = fixtures.TinyClip().encode_from_tokens_scheduled("a photo of sks person")
    gen = torch.Generator().manual_seed(0)
    # three smooth "photos" of 96 px (not square: the node crops them)
    images = torch.nn.functional.interpolate(torch.rand(3, 3, 4, 6, generator=gen), size=(96, 144), mode="bicubic")
    return model, fixtures.TinyVae(), positive, images.clamp(0, 1).movedim(1, -1)


def sampled_lora(pack, seed=4):
    """Stand-in for Decode LoRA's output: the same LORA value, random factors of the layout."""
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    layout = preset(LAYOUT)
    return values.LoraValue(random_kohya_state(layout, seed=seed, scale=0.1), layout, {"hypernet.seed": "4"})


def run_node(refine, tiny, lora, **overrides):
    model, vae, positive, images = tiny
    args = dict(steps=30, learning_rate=1e-2, seed=1, resolution=64) | overrides
    with torch.inference_mode():
        return refine.RefineLoRA.execute(model, vae, positive, images, lora, **args)


def reference_loss(pack, tiny, lora_state):
    """The loss of the MODEL with this LoRA on the photos, measured by the trainer with 0 steps
    (the same noise and timesteps for every LoRA given)."""
    lt = importlib.import_module(f"{pack.__name__}.lora_training")
    model, vae, positive, images = tiny
    latents = lt.encode_images(vae, lt.square_images(images, 64))
    result = lt.train_lora(model, latents, [positive] * 3, preset(LAYOUT), steps=0, learning_rate=1e-3, seed=1,
                           init_lora=lora_from_state_dict(lora_state))
    return result.initial_loss


def test_refine_lowers_the_reference_loss_and_keeps_the_lora_type(comfy, pack, refine, tiny):
    start = sampled_lora(pack)
    out = run_node(refine, tiny, start)
    refined = out.args[0]
    assert type(refined) is type(start) and refined.layout == start.layout
    assert set(refined.state_dict) == set(start.state_dict)
    assert refined.metadata["hypernet.seed"] == "4" and refined.metadata["hypernet.refine_steps"] == "30"
    before, after = reference_loss(pack, tiny, start.state_dict), reference_loss(pack, tiny, refined.state_dict)
    assert after < 0.95 * before, (before, after)
    assert "->" in out.ui["text"][0]


@pytest.fixture(scope="module")
def hypernet_lora(pack, tmp_path_factory):
    """A LoRA as the graph makes one: Load Hypernet -> Sample LoRA -> Decode LoRA, from a tiny
    hypernet trained (seconds) on a synthetic collection of the model's whole layout."""
    import folder_paths
    folder = tmp_path_factory.mktemp("lora_hypernets")
    data = make_dataset(tmp_path_factory.mktemp("refine_data"), identities=12, layout=preset(LAYOUT))
    train(data, folder / "refine.safetensors", quick_config(), progress=False)
    nodes = importlib.import_module(f"{pack.__name__}.nodes.hypernet_nodes")
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    saved = folder_paths.folder_names_and_paths.get("lora_hypernets")
    folder_paths.folder_names_and_paths["lora_hypernets"] = ([str(folder)], {".safetensors"})
    folder_paths.filename_list_cache.clear()
    try:
        hypernet, _ = nodes.LoadHypernet.execute("refine.safetensors")
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop("lora_hypernets")
        else:
            folder_paths.folder_names_and_paths["lora_hypernets"] = saved
        folder_paths.filename_list_cache.clear()
    emb = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    face = values.FaceEmbeddingValue(emb, emb[None], hypernet.hypernet.embedding_model, (0,))
    (latent,) = nodes.SampleLoRA.execute(hypernet, face, 3, 5, 1.5, 0.0)
    return nodes.DecodeLoRA.execute(hypernet, latent)[0]


def test_refine_from_a_lora_sampled_by_the_hypernet_lowers_the_reference_loss(comfy, pack, refine, tiny,
                                                                              hypernet_lora):
    refined = run_node(refine, tiny, hypernet_lora).args[0]
    assert refined.layout == hypernet_lora.layout and refined.metadata["hypernet.refine_steps"] == "30"
    before = reference_loss(pack, tiny, hypernet_lora.state_dict)
    after = reference_loss(pack, tiny, refined.state_dict)
    assert after < 0.95 * before, (before, after)


def test_the_model_comes_out_unchanged(comfy, pack, refine, tiny):
    model = tiny[0]
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    run_node(refine, tiny, sampled_lora(pack), steps=2)
    assert not model.patches and not model.weight_wrapper_patches
    assert not any(getattr(m, "weight_function", []) for m in model.model.modules())
    after = comfy_support.patched_weights(comfy, model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_cancel_stops_with_comfyuis_interrupt_and_leaves_the_model_unpatched(comfy, pack, refine, tiny):
    mm, utils = comfy.model_management, comfy.utils
    model = tiny[0]
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    updates = []

    def press_cancel(value, total, preview=None, *rest, **kw):  # what the server's progress hook sees
        # At the first update: ComfyUI 0.33 throttles later ones (100 ms), the first always arrives.
        updates.append(value)
        mm.interrupt_current_processing(True)

    utils.set_progress_bar_global_hook(press_cancel)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(refine, tiny, sampled_lora(pack), steps=20)
    finally:
        utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert updates == [1]  # stopped before the second step
    assert not any(getattr(m, "weight_function", []) for m in model.model.modules())
    after = comfy_support.patched_weights(comfy, model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_wrong_inputs_get_clear_errors(comfy, pack, refine, tiny):
    # The pack's own copy of the library (imported as ComfyUI imports custom nodes) raises it.
    HypernetError = importlib.import_module(f"{pack.__name__}.hypernet.errors").HypernetError
    with pytest.raises(HypernetError, match="Refine LoRA's lora input got a dict, not this pack's LORA_HYPERNET_LORA"):
        run_node(refine, tiny, {"some": torch.zeros(1)})
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    sd15 = preset("tiny-sd15-w2w")
    with pytest.raises(HypernetError, match="does not fit the connected MODEL"):
        run_node(refine, tiny, values.LoraValue(random_kohya_state(sd15), sd15))
    model, vae, positive, images = tiny
    with pytest.raises(HypernetError, match="non-empty IMAGE batch"):
        with torch.inference_mode():
            refine.RefineLoRA.execute(model, vae, positive, images[:0], sampled_lora(pack), 2, 1e-3, 0, 64)
