"""Apply LoRA and Save LoRA against ComfyUI's own patcher and its stock LoraLoader."""
import importlib

import pytest
import torch
from safetensors import safe_open

from hypernet.layout import attention_layout, preset


def random_lora(pack, model, rank=2, seed=0):
    shapes = {k: v.shape for k, v in model.model.diffusion_model.state_dict().items()}
    layout = attention_layout(shapes, rank=rank, base_model="sdxl")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for m in layout:
        state[f"{m.name}.lora_up.weight"] = torch.randn(m.out_features, m.rank, generator=gen) * 0.1
        state[f"{m.name}.lora_down.weight"] = torch.randn(m.rank, m.in_features, generator=gen) * 0.1
        state[f"{m.name}.alpha"] = torch.tensor(float(m.rank))
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    return values.LoraValue(state, layout, {"seed": "0"})


def patched_weights(comfy, patcher) -> dict:
    comfy.model_management.load_models_gpu([patcher])
    weights = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    comfy.model_management.unload_all_models()
    return weights


@pytest.fixture
def lora_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.lora_nodes")


@pytest.fixture
def loras_dir(comfy, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def test_apply_matches_saving_and_loading_with_stock_lora_loader(comfy, pack, lora_nodes, tiny_sdxl, loras_dir):
    import nodes as comfy_nodes

    lora = random_lora(pack, tiny_sdxl)
    before = {k: v.clone() for k, v in tiny_sdxl.model.state_dict().items()}

    ours, _ = lora_nodes.ApplyLoRA.execute(tiny_sdxl, lora, 0.8)
    assert ours is not tiny_sdxl and len(ours.patches) == len(lora.layout)
    ours_w = patched_weights(comfy, ours)

    lora_nodes.SaveLoRA.execute(lora, "cmp/person", "loras")
    saved = sorted(p.relative_to(loras_dir).as_posix() for p in loras_dir.rglob("*.safetensors"))
    assert saved == ["cmp/person_00001_.safetensors"]
    (stock,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny_sdxl, saved[0], 0.8)
    stock_w = patched_weights(comfy, stock)

    changed = [k for k in before if not torch.equal(ours_w[k], before[k])]
    assert len(changed) == len(lora.layout)
    for key in before:
        assert torch.equal(ours_w[key], stock_w[key]), key
    after = tiny_sdxl.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "the input MODEL must stay untouched"


def test_strength_zero_leaves_weights_unchanged(comfy, pack, lora_nodes, tiny_sdxl):
    before = {k: v.clone() for k, v in tiny_sdxl.model.state_dict().items()}
    out, _ = lora_nodes.ApplyLoRA.execute(tiny_sdxl, random_lora(pack, tiny_sdxl), 0.0)
    got = patched_weights(comfy, out)
    assert all(torch.equal(got[k], before[k]) for k in before)


def test_layout_for_another_model_is_refused_with_the_mismatch(pack, lora_nodes, tiny_sdxl):
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    layout = preset("sdxl-qv-r1")
    state = {}
    for m in layout:
        state[f"{m.name}.lora_up.weight"] = torch.zeros(m.out_features, 1)
        state[f"{m.name}.lora_down.weight"] = torch.zeros(1, m.in_features)
    # The pack's own copy of the library (imported as ComfyUI imports custom nodes) raises it.
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    with pytest.raises(errors.HypernetError, match=r"does not fit the connected MODEL: .*other shapes.*640x640, model 64x64"):
        lora_nodes.ApplyLoRA.execute(tiny_sdxl, values.LoraValue(state, layout), 1.0)


def test_save_never_overwrites_and_keeps_metadata(comfy, pack, lora_nodes, tiny_sdxl, loras_dir):
    lora = random_lora(pack, tiny_sdxl)
    first = lora_nodes.SaveLoRA.execute(lora, "person", "loras")
    (loras_dir / "person_00002_.safetensors").write_bytes(b"somebody else's file")
    second = lora_nodes.SaveLoRA.execute(lora, "person", "loras")
    assert first.ui["text"] == ["saved loras/person_00001_.safetensors"]
    assert second.ui["text"] == ["saved loras/person_00003_.safetensors"]
    assert (loras_dir / "person_00002_.safetensors").read_bytes() == b"somebody else's file"
    with safe_open(loras_dir / "person_00003_.safetensors", "pt") as f:
        assert f.metadata()["seed"] == "0"
        assert set(f.keys()) == set(lora.state_dict)
    assert not list(loras_dir.glob(".*partial"))


def test_another_packs_plain_dict_gets_a_message_not_an_attribute_error(comfy, pack, lora_nodes, tiny_sdxl):
    # ComfyUI-HyperLoRA's LORA is a plain dict; with the old, unprefixed type name the editor let
    # users wire it into Apply LoRA, which failed on `.layout`.
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    foreign = {"lora_unet_x.lora_up.weight": torch.zeros(4, 4)}
    for call in (lambda: lora_nodes.ApplyLoRA.execute(tiny_sdxl, foreign, 1.0),
                 lambda: lora_nodes.SaveLoRA.execute(foreign, "person", "loras")):
        with pytest.raises(errors.HypernetError, match="got a dict, not this pack's LORA_HYPERNET_LORA.*Decode LoRA"):
            call()
