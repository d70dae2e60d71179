"""Apply LoRA on a tiny SD1.5-architecture MODEL: patching, the fits-the-MODEL check against SDXL,
and ComfyUI's stock LoraLoader on the same saved file."""
import importlib

import pytest
import torch

from hypernet.lora.layout import attention_layout
from hypernet.lora.presets import preset
from comfy_support import patched_weights
from random_weights import random_kohya_state


def unet_shapes(patcher) -> dict:
    return {k: tuple(v.shape) for k, v in patcher.model.diffusion_model.state_dict().items()}


def lora_value(pack, layout, seed=0):
    values = importlib.import_module(f"{pack.__name__}.nodes.values")
    return values.LoraValue(random_kohya_state(layout, seed, scale=0.1), layout, {"seed": str(seed)})


def test_tiny_sd15_is_comfyui_sd15_with_the_w2w_modules(comfy, tiny_sd15):
    assert type(tiny_sd15.model) is comfy.model_base.BaseModel
    assert type(tiny_sd15.model.model_config) is comfy.supported_models.SD15
    shapes = unet_shapes(tiny_sd15)
    assert sum(".attn1.to_q." in k for k in shapes) == 16  # SD1.5's 16 transformers
    w2w = attention_layout(shapes, rank=1, projections=("q", "v"), alpha=27, base_model="sd15")
    assert w2w == preset("tiny-sd15-w2w")
    assert w2w.names == preset("sd15-w2w").names  # the same modules as the real SD1.5 w2w layout


@pytest.mark.parametrize("rank,projections", [(1, ("q", "v")), (2, ("q", "k", "v", "out"))])
def test_apply_on_sd15_matches_the_stock_lora_loader(comfy, pack, lora_nodes, tiny_sd15, loras_dir, rank,
                                                     projections):
    import nodes as comfy_nodes

    layout = attention_layout(unet_shapes(tiny_sd15), rank=rank, projections=projections, base_model="sd15")
    lora = lora_value(pack, layout)
    before = {k: v.clone() for k, v in tiny_sd15.model.state_dict().items()}

    ours, _ = lora_nodes.ApplyLoRA.execute(tiny_sd15, lora, 0.8)
    assert ours is not tiny_sd15 and len(ours.patches) == len(layout)
    ours_w = patched_weights(comfy, ours)

    lora_nodes.SaveLoRA.execute(lora, "sd15/person", "loras")
    (saved,) = [p.relative_to(loras_dir).as_posix() for p in loras_dir.rglob("*.safetensors")]
    (stock,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny_sd15, saved, 0.8)
    stock_w = patched_weights(comfy, stock)

    changed = [k for k in before if not torch.equal(ours_w[k], before[k])]
    assert len(changed) == len(layout)
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"
    delta = lora.state_dict[f"{name}.lora_up.weight"] @ lora.state_dict[f"{name}.lora_down.weight"]
    torch.testing.assert_close(ours_w[key], before[key] + 0.8 * delta, rtol=0, atol=1e-6)  # alpha = rank
    for k in before:
        assert torch.equal(ours_w[k], stock_w[k]), k
    after = tiny_sd15.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "the input MODEL must stay untouched"


def test_an_sdxl_lora_is_refused_on_sd15_and_the_reverse(pack, lora_nodes, tiny_sd15, tiny_sdxl):
    errors = importlib.import_module(f"{pack.__name__}.hypernet.errors")
    sdxl = attention_layout(unet_shapes(tiny_sdxl), rank=1, projections=("q", "v"), base_model="sdxl")
    sd15 = attention_layout(unet_shapes(tiny_sd15), rank=1, projections=("q", "v"), base_model="sd15")
    with pytest.raises(errors.HypernetError, match=r"made for base model 'sdxl'\) does not fit the connected "
                                                   r"MODEL: .*do not exist in the model.*output_blocks_0_1"):
        lora_nodes.ApplyLoRA.execute(tiny_sd15, lora_value(pack, sdxl), 1.0)
    with pytest.raises(errors.HypernetError, match=r"made for base model 'sd15'\) does not fit the connected "
                                                   r"MODEL: .*do not exist in the model.*input_blocks_1_1"):
        lora_nodes.ApplyLoRA.execute(tiny_sdxl, lora_value(pack, sd15), 1.0)
    for real in ("sd15-w2w", "sd15-attn-r4"):  # the real SD1.5 layouts: same names, other shapes
        with pytest.raises(errors.HypernetError, match=r"other shapes.*model 32x32"):
            lora_nodes.ApplyLoRA.execute(tiny_sd15, lora_value(pack, preset(real)), 1.0)
