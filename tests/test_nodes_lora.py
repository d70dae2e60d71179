"""Apply LoRA and Save LoRA against ComfyUI's own patcher and its stock LoraLoader."""
import importlib

import pytest
import torch
from safetensors import safe_open

from hypernet.common.files import check_filename_prefix
from hypernet.errors import HypernetError
from hypernet.lora.layout import attention_layout
from hypernet.lora.presets import preset
from comfy_support import patched_weights
from random_weights import random_kohya_state


def random_lora(pack, model, rank=2, seed=0):
    shapes = {k: v.shape for k, v in model.model.diffusion_model.state_dict().items()}
    layout = attention_layout(shapes, rank=rank, base_model="sdxl")
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    return values.LoraValue(random_kohya_state(layout, seed, scale=0.1), layout, {"seed": "0"})


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


# Prefixes a user (or a shared workflow) may type; each must be refused before anything is written.
HOSTILE_PREFIXES = {
    "parent folder": "../escaped",
    "parent folder deeper": "hypernet/../../escaped",
    "absolute path": "/tmp/escaped",
    "backslashes": "..\\..\\escaped",
    "NUL byte": "person\x00.png",
    "newline": "person\nname",
    "empty": "",
    "hidden file": ".person",
    "hidden folder": "hypernet/.cache/person",
    "empty folder name": "hypernet//person",
    "trailing slash": "hypernet/",
    "drive letter": "C:person",
    "name too long": "p" * 300,
    "path too long": "/".join(["folder"] * 80),
}


@pytest.fixture
def save_roots(comfy, tmp_path, monkeypatch):
    """models/loras and output two levels below tmp_path, so a prefix that escapes them still
    lands inside tmp_path, where the test can see it."""
    import folder_paths
    loras, output = tmp_path / "base" / "models" / "loras", tmp_path / "base" / "output"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(loras)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    return tmp_path


@pytest.mark.parametrize("destination", ["loras", "output"])
@pytest.mark.parametrize("prefix", list(HOSTILE_PREFIXES.values()), ids=list(HOSTILE_PREFIXES))
def test_save_refuses_a_hostile_prefix_with_what_is_allowed_and_writes_nothing(
        pack, lora_nodes, tiny_sdxl, save_roots, prefix, destination):
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    with pytest.raises(errors.HypernetError) as caught:
        lora_nodes.SaveLoRA.execute(random_lora(pack, tiny_sdxl), prefix, destination)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    assert "use letters, digits, spaces and - _ . with / between sub-folders" in message
    assert not [p for p in save_roots.rglob("*")], "something was written"


@pytest.mark.parametrize("prefix", ["hypernet/person", "person", "my person-1.v2", "Jos\u00e9/\u674e_2", "a/b/c/d"])
def test_ordinary_prefixes_pass_unchanged(prefix):
    assert check_filename_prefix(prefix) == prefix


def test_prefix_messages_name_the_problem():
    cases = {"../x": "goes up a folder", "/x": "absolute path", "a\\b": "backslash", "a\x00b": "control character",
             "": "is empty", ".x": "starting with '.'", "a//b": "empty folder", "a?b": "contains '?'",
             "x" * 201: "longer than 200 bytes"}
    for prefix, problem in cases.items():
        with pytest.raises(HypernetError, match=problem):
            check_filename_prefix(prefix)
    with pytest.raises(HypernetError, match=r"^file name prefix 'xxxx.*\.\.\.' is longer"):
        check_filename_prefix("x" * 5000)  # the value is shown cut short, not echoed whole


def test_another_packs_plain_dict_gets_a_message_not_an_attribute_error(comfy, pack, lora_nodes, tiny_sdxl):
    # ComfyUI-HyperLoRA's LORA is a plain dict; with the old, unprefixed type name the editor let
    # users wire it into Apply LoRA, which failed on `.layout`.
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    foreign = {"lora_unet_x.lora_up.weight": torch.zeros(4, 4)}
    for call in (lambda: lora_nodes.ApplyLoRA.execute(tiny_sdxl, foreign, 1.0),
                 lambda: lora_nodes.SaveLoRA.execute(foreign, "person", "loras")):
        with pytest.raises(errors.HypernetError, match="got a dict, not this pack's LORA_HYPERNET_LORA.*Decode LoRA"):
            call()
