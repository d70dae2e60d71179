"""SD1.5 layouts against ComfyUI's real SD1.5 UNet, built on the meta device (names and shapes only)."""
import pytest
import torch

from comfy_support import SD15_UNET
from hypernet.lora.layout import attention_layout, kohya_unet_name, layout_mismatches
from hypernet.lora.presets import preset, unet_attention_shapes
from hypernet.lora.w2w import peft_module, w2w_dimensions, w2w_peft_keys


@pytest.fixture(scope="module")
def sd15_meta(comfy):
    """ComfyUI's real SD1.5 BaseModel (860 M parameters) on the meta device."""
    model_config = comfy.supported_models.SD15(dict(SD15_UNET))
    model_config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):
        return comfy.model_base.BaseModel(model_config, device="meta")


@pytest.mark.parametrize("name,modules,values", [("sd15-w2w", 64, 99_648), ("sd15-attn-r4", 128, 797_184)])
def test_sd15_presets_have_the_documented_sizes(name, modules, values):
    layout = preset(name)
    assert (len(layout), layout.num_values, layout.base_model) == (modules, values, "sd15")


def test_sd15_table_matches_comfyui_sd15_unet(sd15_meta):
    params = sum(p.numel() for p in sd15_meta.diffusion_model.parameters())
    assert 8.5e8 < params < 8.7e8
    shapes = {k: tuple(v.shape) for k, v in sd15_meta.diffusion_model.state_dict().items()}
    table = unet_attention_shapes("sd15")
    assert {k: shapes[k] for k in table} == table
    attn = [k for k in shapes if (".attn1.to_" in k or ".attn2.to_" in k) and k.endswith(".weight")]
    assert len(attn) == len(table) == 128
    assert attention_layout(shapes, rank=4, base_model="sd15") == preset("sd15-attn-r4")
    w2w = attention_layout(shapes, rank=1, projections=("q", "v"), alpha=27, base_model="sd15")
    assert w2w == preset("sd15-w2w") and {m.alpha for m in w2w} == {27.0}


@pytest.mark.parametrize("name", ["sd15-w2w", "sd15-attn-r4"])
def test_every_sd15_preset_module_is_in_comfyui_key_map(comfy, sd15_meta, name):
    key_map = comfy.lora.model_lora_keys_unet(sd15_meta, {})
    state = sd15_meta.state_dict()
    shapes = {n: tuple(state[k].shape) for n, k in key_map.items() if k in state}
    layout = preset(name)
    assert all(m in key_map for m in layout.names)
    assert layout_mismatches(layout, shapes) == []


def test_w2w_peft_keys_map_as_comfyui_maps_diffusers_names(comfy, sd15_meta):
    """Our diffusers -> ldm mapping of the weights2weights PEFT keys agrees with ComfyUI's own."""
    diffusers = comfy.utils.unet_to_diffusers(sd15_meta.model_config.unet_config)
    layout = preset("sd15-w2w")
    for key in w2w_peft_keys():
        path = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        assert peft_module(key)[0] == kohya_unet_name(diffusers[f"{path}.weight"])
    assert {peft_module(k)[0] for k in w2w_peft_keys()} == set(layout.names)
    assert sum(a * b for _, (a, b) in w2w_dimensions(layout)) == 99_648


def test_sd15_layout_refuses_sdxl_and_the_reverse(sdxl_meta):
    shapes = {kohya_unet_name(k): tuple(v.shape) for k, v in sdxl_meta.diffusion_model.state_dict().items()
              if k.endswith(".weight")}
    problems = layout_mismatches(preset("sd15-w2w"), shapes)
    assert problems and "do not exist in the model" in problems[0]
    sd15 = {kohya_unet_name(k): s for k, s in unet_attention_shapes("sd15").items()}
    assert layout_mismatches(preset("sdxl-qv-r1"), sd15)
