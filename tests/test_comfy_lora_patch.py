"""ComfyUI's own LoRA patching on the tiny SDXL MODEL, checked weight by weight."""
import pytest
import torch

from hypernet.lora.layout import attention_layout

KEY = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
NAME = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"


def kohya_lora(shapes: dict, names, rank: int, alpha: float, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name in names:
        out_f, in_f = shapes[name]
        sd[f"{name}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen)
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen)
        sd[f"{name}.alpha"] = torch.tensor(float(alpha))
    return sd


def tiny_shapes(model):
    return {f"lora_unet_{k[len('diffusion_model.'):-len('.weight')].replace('.', '_')}": tuple(v.shape)
            for k, v in model.model.state_dict().items() if k.endswith(".weight")}


@pytest.mark.parametrize("strength", [1.0, 0.7, -0.5])
def test_load_lora_for_models_patches_exact_weights_and_unpatch_restores(comfy, tiny_sdxl, strength):
    rank, alpha = 4, 2.0
    shapes = tiny_shapes(tiny_sdxl)
    lora = kohya_lora(shapes, [NAME], rank, alpha)
    original = tiny_sdxl.model.state_dict()[KEY].clone()

    patched, _ = comfy.sd.load_lora_for_models(tiny_sdxl, None, lora, strength, 0.0)
    assert patched is not tiny_sdxl
    patched.patch_model()
    try:
        got = patched.model.state_dict()[KEY].clone()
    finally:
        patched.unpatch_model()
    delta = lora[f"{NAME}.lora_up.weight"] @ lora[f"{NAME}.lora_down.weight"]
    expected = original + (strength * alpha / rank) * delta
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.equal(got, original)
    assert torch.equal(tiny_sdxl.model.state_dict()[KEY], original), "unpatching must restore W exactly"


def test_attention_layout_of_tiny_model_loads_without_missing_keys(comfy, tiny_sdxl, caplog):
    shapes = {k: v.shape for k, v in tiny_sdxl.model.diffusion_model.state_dict().items()}
    layout = attention_layout(shapes, rank=2, base_model="sdxl")
    assert len(layout) == 88  # 11 transformer blocks x (self + cross) x (q, k, v, out)
    lora = kohya_lora(tiny_shapes(tiny_sdxl), layout.names, 2, 2.0)
    with caplog.at_level("WARNING"):
        patched, _ = comfy.sd.load_lora_for_models(tiny_sdxl, None, lora, 1.0, 0.0)
    assert "lora key not loaded" not in caplog.text
    assert len(patched.patches) == 88
