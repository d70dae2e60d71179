"""Layouts against ComfyUI's real SDXL UNet, built on the meta device (names and shapes only)."""
import pytest

from hypernet.lora.layout import Layout, attention_layout, layout_mismatches
from hypernet.lora.presets import preset, sdxl_attention_shapes


@pytest.mark.parametrize("name,modules,values", [("sdxl-attn-r4", 560, 5_806_080), ("sdxl-qv-r1", 280, 725_760)])
def test_presets_have_the_documented_sizes(name, modules, values):
    layout = preset(name)
    assert (len(layout), layout.num_values) == (modules, values)
    assert Layout.from_json(layout.to_json()) == layout


def test_sdxl_table_matches_comfyui_sdxl_unet(sdxl_meta):
    params = sum(p.numel() for p in sdxl_meta.diffusion_model.parameters())
    assert 2.56e9 < params < 2.58e9
    shapes = {k: tuple(v.shape) for k, v in sdxl_meta.diffusion_model.state_dict().items()}
    table = sdxl_attention_shapes()
    assert {k: shapes[k] for k in table} == table
    attn = [k for k in shapes if (".attn1.to_" in k or ".attn2.to_" in k) and k.endswith(".weight")]
    assert len(attn) == len(table) == 560
    assert attention_layout(shapes, rank=4, base_model="sdxl") == preset("sdxl-attn-r4")


@pytest.mark.parametrize("name", ["sdxl-attn-r4", "sdxl-qv-r1"])
def test_every_preset_module_is_in_comfyui_sdxl_key_map(comfy, sdxl_meta, name):
    key_map = comfy.lora.model_lora_keys_unet(sdxl_meta, {})
    state = sdxl_meta.state_dict()
    shapes = {n: tuple(state[k].shape) for n, k in key_map.items() if k in state}
    layout = preset(name)
    assert all(m in key_map for m in layout.names)
    assert layout_mismatches(layout, shapes) == []


def test_sdxl_layout_refuses_the_tiny_model(tiny_sdxl):
    shapes = {f"lora_unet_{k[len('diffusion_model.'):-len('.weight')].replace('.', '_')}": tuple(v.shape)
              for k, v in tiny_sdxl.model.state_dict().items() if k.endswith(".weight")}
    problems = layout_mismatches(preset("sdxl-attn-r4"), shapes)
    assert problems and "do not exist in the model" in problems[0]
    assert any("other shapes" in p for p in problems)
