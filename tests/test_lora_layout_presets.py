"""Layout presets built from the UNet spec table, and layouts named on the command line."""
from __future__ import annotations

import re

import pytest

from hypernet.errors import HypernetError
from hypernet.lora.presets import PRESETS, load_layout, preset


@pytest.mark.parametrize("name, modules, values", [("sdxl-attn-r4", 560, 5_806_080), ("sdxl-qv-r1", 280, 725_760),
                                                   ("tiny-attn-r4", 88, 66_560), ("synth-100k", 88, 99_840),
                                                   ("sd15-w2w", 64, 99_648), ("sd15-attn-r4", 128, 797_184)])
def test_preset_sizes(name, modules, values):
    layout = preset(name)
    assert (len(layout), layout.num_values) == (modules, values)
    assert layout.base_model == ("sd15" if name.startswith("sd15") else "sdxl")


def test_w2w_preset_is_rank_1_alpha_27_on_q_and_v_of_both_attentions():
    layout = preset("sd15-w2w")
    assert {(m.rank, m.alpha) for m in layout} == {(1, 27.0)}
    assert {re.search(r"(attn[12])_to_(\w+)$", n).groups() for n in layout.names} == \
        {("attn1", "q"), ("attn1", "v"), ("attn2", "q"), ("attn2", "v")}
    cross_v = layout["lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"]
    assert (cross_v.out_features, cross_v.in_features) == (320, 768)  # CLIP-L context


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
    assert set(PRESETS) >= {"sdxl-attn-r4", "sdxl-qv-r1", "tiny-attn-r4", "synth-100k", "sd15-w2w", "sd15-attn-r4"}
    path = tmp_path / "layout.json"
    path.write_text(preset("tiny-attn-r4").with_rank(2).to_json())
    assert load_layout(str(path)) == preset("tiny-attn-r4").with_rank(2)
    assert load_layout("sdxl-qv-r1") == preset("sdxl-qv-r1")
    with pytest.raises(HypernetError, match="neither a layout preset"):
        load_layout("sdxl-everything")
    path.write_text("{}")
    with pytest.raises(HypernetError, match="not a valid layout"):
        load_layout(str(path))


# --- size bounds: a damaged layout is refused before any per-module work ------------------

class _CountingName(str):
    """A module name that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other):
        _CountingName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_layout_of_300000_modules_is_refused_before_sorting_or_building(monkeypatch, tmp_path):
    import hypernet.lora.layout as layout_module
    from hypernet.lora.layout import MAX_MODULES, Layout, LoraModule

    keyed, built = [], []
    real_key, real_from_list = layout_module.natural_key, LoraModule.from_list.__func__
    monkeypatch.setattr(layout_module, "natural_key", lambda name: keyed.append(name) or real_key(name))
    monkeypatch.setattr(LoraModule, "from_list", classmethod(lambda cls, item: built.append(1) or real_from_list(cls, item)))
    one = LoraModule("lora_unet_x", 4, 4, 1, 1.0)
    with pytest.raises(ValueError, match="300,000 modules"):
        Layout((one,) * 300_000)
    data = {"version": 1, "base_model": "sdxl", "modules": [one.to_list()] * 300_000}
    with pytest.raises(ValueError, match=f"more than the {MAX_MODULES:,}"):
        Layout.from_dict(data)
    path = tmp_path / "huge.json"
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(HypernetError, match="not a valid layout: a layout of 300,000 modules"):
        load_layout(str(path))
    assert keyed == [] and built == []


def test_duplicate_check_is_linear_in_the_module_count():
    from hypernet.lora.layout import Layout, LoraModule

    count = 3000
    modules = [LoraModule(_CountingName(f"lora_unet_m_{i}"), 4, 4, 1, 1.0) for i in range(count)]
    _CountingName.compared = 0
    Layout(tuple(modules))
    assert _CountingName.compared <= count  # names.count() compared each name with every other: count**2
    modules.append(LoraModule(_CountingName("lora_unet_m_7"), 4, 4, 1, 1.0))
    _CountingName.compared = 0
    with pytest.raises(ValueError, match="more than once: lora_unet_m_7"):
        Layout(tuple(modules))
    assert _CountingName.compared <= 4 * count
