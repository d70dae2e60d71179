"""Canonical factors, flat vectors and the normaliser."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypernet.lora.canonical import canonical_factors, canonical_module, canonicalize
from hypernet.errors import HypernetError
from hypernet.lora.layout import Layout, LoraModule
from hypernet.lora.presets import preset
from hypernet.lora.vectorize import Normalizer, flatten, module_slices, module_views, unflatten
from hypernet.lora.weights import LoraWeights, ModuleWeights

SMALL = Layout((LoraModule("lora_unet_middle_block_1_proj_in", 6, 5, 2, 2.0),
                LoraModule("lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q", 5, 5, 3, 3.0),
                LoraModule("lora_unet_input_blocks_1_0_in_layers_2", 4 * 9, 7, 2, 2.0, "conv", (3, 3))), "sdxl")


def _random_lora(layout: Layout, gen: torch.Generator, rank: int | None = None) -> LoraWeights:
    modules = {}
    for m in layout:
        r = rank or m.rank
        up, down = torch.randn(m.out_features, r, generator=gen), torch.randn(r, m.in_features, generator=gen)
        if m.kind == "conv":
            up, down = up.reshape(m.out_features, r, 1, 1), down.reshape(r, m.in_channels, *m.kernel)
        modules[m.name] = ModuleWeights(up, down, float(torch.rand((), generator=gen)) * 4 + 0.5)
    return LoraWeights(modules)


def _mixed(m: ModuleWeights, gen: torch.Generator, alpha: float) -> ModuleWeights:
    """Same delta W, other factors: up·M·(r/alpha')·(alpha/r), M⁻¹·down, alpha'."""
    r = m.rank
    mix = torch.randn(r, r, generator=gen, dtype=torch.float64) + 2 * torch.eye(r, dtype=torch.float64)
    up = (m.up_matrix().double() @ mix) * (m.alpha / alpha)
    down = torch.linalg.solve(mix, m.down_matrix().double())
    return ModuleWeights(up.float().reshape(m.up.shape), down.float().reshape(m.down.shape), alpha)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), alpha=st.floats(0.25, 16))
def test_canonical_vector_is_invariant_to_rank_mixing_and_alpha(seed, alpha):
    gen = torch.Generator().manual_seed(seed)
    lora = _random_lora(SMALL, gen)
    mixed = LoraWeights({name: _mixed(m, gen, alpha) for name, m in lora.items()})
    a, b = flatten(lora, SMALL), flatten(mixed, SMALL)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (a - b).abs().max()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16))
def test_canonical_factors_keep_delta_and_are_balanced(seed):
    gen = torch.Generator().manual_seed(seed)
    m = ModuleWeights(torch.randn(9, 3, generator=gen), torch.randn(3, 11, generator=gen), 1.5)
    canon = canonical_module(m)
    assert canon.alpha == 3.0
    assert torch.allclose(canon.delta(), m.delta(), atol=1e-5)
    up, down = canon.up_matrix(), canon.down_matrix()
    # up = U√S, down = √S·Vᵀ: equal column / row norms, orthogonal columns and rows.
    assert torch.allclose(up.norm(dim=0), down.norm(dim=1), rtol=1e-4)
    gram = up.T @ up
    assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-4)
    # sign rule: the largest-|value| entry of each up column is positive
    assert (up.gather(0, up.abs().argmax(0, keepdim=True)) > 0).all()
    # singular values in decreasing order
    assert (up.norm(dim=0)[:-1] >= up.norm(dim=0)[1:]).all()


def test_rank_is_truncated_to_top_singular_values_or_zero_padded():
    gen = torch.Generator().manual_seed(1)
    m = ModuleWeights(torch.randn(20, 4, generator=gen), torch.randn(4, 16, generator=gen), 4.0)
    up, down = canonical_factors(m.up_matrix(), m.down_matrix(), m.scale, rank=2)
    full = m.delta().double()
    u, s, vh = torch.linalg.svd(full)
    best_rank2 = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose((up @ down).double(), best_rank2, atol=1e-4)
    up6, down6 = canonical_factors(m.up_matrix(), m.down_matrix(), m.scale, rank=6)
    assert up6.shape == (20, 6) and down6.shape == (6, 16)
    assert torch.count_nonzero(up6[:, 4:]) == 0 and torch.count_nonzero(down6[4:]) == 0
    assert torch.allclose(up6 @ down6, m.delta(), atol=1e-5)


def test_canonicalize_uses_layout_ranks_and_keeps_conv_shapes():
    gen = torch.Generator().manual_seed(2)
    lora = _random_lora(SMALL, gen, rank=4)
    canon = canonicalize(lora, SMALL)
    for m in SMALL:
        assert canon[m.name].rank == m.rank and canon[m.name].alpha == m.rank
    conv = canon["lora_unet_input_blocks_1_0_in_layers_2"]
    assert conv.up.shape == (7, 2, 1, 1) and conv.down.shape == (2, 4, 3, 3)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16))
def test_unflatten_then_flatten_is_identity(seed):
    gen = torch.Generator().manual_seed(seed)
    vector = flatten(_random_lora(SMALL, gen), SMALL)
    again = flatten(unflatten(vector, SMALL), SMALL)
    assert torch.allclose(vector, again, rtol=1e-4, atol=1e-5)
    # and the unflattened LoRA carries the same delta W, with alpha = rank
    lora = unflatten(vector, SMALL)
    for m in SMALL:
        assert lora[m.name].alpha == m.rank and lora[m.name].kind == m.kind


def test_flat_vector_follows_the_contract():
    gen = torch.Generator().manual_seed(3)
    lora = canonicalize(_random_lora(SMALL, gen), SMALL)
    vector = flatten(lora, SMALL)
    for s, m in zip(module_slices(SMALL), SMALL):
        assert torch.allclose(vector[s.start:s.mid], lora[m.name].up_matrix().reshape(-1), atol=1e-5)
        assert torch.allclose(vector[s.mid:s.stop], lora[m.name].down_matrix().reshape(-1), atol=1e-5)
    assert module_slices(SMALL)[-1].stop == SMALL.num_values
    batch = torch.stack([vector, 2 * vector])
    up, down = module_views(batch, SMALL)["lora_unet_middle_block_1_proj_in"]
    assert up.shape == (2, 5, 2) and down.shape == (2, 2, 6)
    assert torch.allclose(up[1] @ down[1], 4 * lora["lora_unet_middle_block_1_proj_in"].delta(), atol=1e-4)


def test_flatten_names_missing_extra_and_misshaped_modules():
    gen = torch.Generator().manual_seed(4)
    lora = dict(_random_lora(SMALL, gen))
    del lora["lora_unet_middle_block_1_proj_in"]
    lora["lora_unet_output_blocks_0_1_proj_out"] = ModuleWeights(torch.randn(3, 1), torch.randn(1, 3), 1.0)
    lora["lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q"] = ModuleWeights(torch.randn(8, 3), torch.randn(3, 5), 1.0)
    with pytest.raises(HypernetError) as info:
        flatten(LoraWeights(lora), SMALL, source="x.safetensors")
    message = str(info.value)
    for word in ("x.safetensors", "missing", "lora_unet_middle_block_1_proj_in", "not in the layout",
                 "lora_unet_output_blocks_0_1_proj_out", "other shapes", "8x5"):
        assert word in message, message


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(Normalizer.MODES), n=st.integers(1, 6))
def test_normalizer_is_invertible_and_standardises(seed, mode, n):
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(n, SMALL.num_values, generator=gen) * torch.rand(SMALL.num_values, generator=gen) + 3
    data[:, 5] = 0.25  # a constant dimension must not divide by zero
    norm = Normalizer.fit(data, SMALL, mode=mode, chunk_rows=2)
    z = norm.normalize(data)
    assert torch.isfinite(z).all()
    assert torch.allclose(norm.denormalize(z), data, atol=1e-4)
    assert torch.allclose(z.mean(0), torch.zeros(SMALL.num_values), atol=1e-3)
    restored = Normalizer.from_state_dict(norm.state_dict())
    assert torch.equal(restored.normalize(data), z)
    if mode == "dim" and n > 1:
        varying = torch.ones(SMALL.num_values, dtype=torch.bool)
        varying[5] = False
        assert torch.allclose(z[:, varying].std(0, unbiased=False), torch.ones(int(varying.sum())), atol=1e-3)


def test_normalizer_of_one_sample_does_not_scale():
    data = torch.randn(1, SMALL.num_values)
    norm = Normalizer.fit(data)
    assert torch.equal(norm.std, torch.ones(SMALL.num_values))
    assert torch.allclose(norm.normalize(data + 1), torch.ones(1, SMALL.num_values))


def test_module_mode_uses_one_std_per_module():
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(8, SMALL.num_values, generator=gen)
    std = Normalizer.fit(data, SMALL, mode="module").std
    for s in module_slices(SMALL):
        assert torch.unique(std[s.start:s.stop]).numel() == 1
    with pytest.raises(HypernetError):
        Normalizer.fit(data, mode="module")


def test_sdxl_layout_flattens_at_full_size():
    layout = preset("sdxl-qv-r1")
    gen = torch.Generator().manual_seed(6)
    lora = _random_lora(layout, gen, rank=2)
    assert flatten(lora, layout).shape == (725_760,)


def test_global_mode_uses_one_std_for_every_dimension():
    gen = torch.Generator().manual_seed(6)
    data = torch.randn(50, 4, generator=gen) * torch.tensor([4.0, 2.0, 1.0, 0.5])
    norm = Normalizer.fit(data, mode="global")
    assert torch.unique(norm.std).numel() == 1
    assert torch.allclose(norm.std[0] ** 2, data.var(0, unbiased=False).mean(), rtol=1e-5)
    spread = norm.normalize(data).std(0)  # the dimensions keep their relative sizes
    assert torch.allclose(spread / spread[0], torch.tensor([1.0, 0.5, 0.25, 0.125]), rtol=0.3)
