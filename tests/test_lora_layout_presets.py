"""Layout presets built from the UNet spec table, and layouts named on the command line."""
from __future__ import annotations

import pytest

from hypernet.errors import HypernetError
from hypernet.lora.presets import load_layout, preset, PRESETS


@pytest.mark.parametrize("name, modules, values", [("sdxl-attn-r4", 560, 5_806_080), ("sdxl-qv-r1", 280, 725_760),
                                                   ("tiny-attn-r4", 88, 66_560), ("synth-100k", 88, 99_840)])
def test_preset_sizes(name, modules, values):
    layout = preset(name)
    assert (len(layout), layout.num_values, layout.base_model) == (modules, values, "sdxl")


def test_tiny_preset_follows_the_tiny_test_unet():
    layout = preset("tiny-attn-r4")
    blocks = {name.split("_transformer_blocks")[0] for name in layout.names}
    assert blocks == {f"lora_unet_input_blocks_{i}_1" for i in (4, 5, 7, 8)} | {"lora_unet_middle_block_1"} | \
        {f"lora_unet_output_blocks_{i}_1" for i in range(6)}
    q64 = layout["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    k128 = layout["lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k"]
    assert (q64.out_features, q64.in_features) == (64, 64)
    assert (k128.out_features, k128.in_features) == (128, 64)  # context_dim 64
    assert all(m.rank == 4 and m.alpha == 4 for m in layout)


def test_load_layout_takes_a_preset_or_a_json_file(tmp_path):
    assert set(PRESETS) >= {"sdxl-attn-r4", "sdxl-qv-r1", "tiny-attn-r4", "synth-100k"}
    path = tmp_path / "layout.json"
    path.write_text(preset("tiny-attn-r4").with_rank(2).to_json())
    assert load_layout(str(path)) == preset("tiny-attn-r4").with_rank(2)
    assert load_layout("sdxl-qv-r1") == preset("sdxl-qv-r1")
    with pytest.raises(HypernetError, match="neither a layout preset"):
        load_layout("sdxl-everything")
    path.write_text("{}")
    with pytest.raises(HypernetError, match="not a valid layout"):
        load_layout(str(path))
