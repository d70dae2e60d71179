"""Shortcuts that buy speed change nothing else: the sampler gives the same numbers bit for bit
as the plain path, and Apply LoRA's cached shape map answers like a fresh one."""
import gc
import importlib

import pytest
import torch

from hypernet.lora.layout import Layout
from hypernet.lora.presets import preset
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.denoiser_mlp import Denoiser
from hypernet.model.prior_config import PriorConfig
from hypernet.common.tensors import all_finite, seeded_generator
from hypernet.pipeline.condition_inputs import condition_rows
from hypernet.pipeline.sampling import sample_latents
from hypernet.pipeline.train_config import load_train_config
from random_weights import randomised

SMALL = Layout(preset("tiny-attn-r4").modules[:6], "sdxl")


@pytest.mark.parametrize("conditioning", ["adalora", "adanorm"])
def test_prepared_condition_gives_the_same_output_bit_for_bit(conditioning):
    prior = randomised(Denoiser(16, 8, 1000, PriorConfig(width=32, blocks=2, conditioning=conditioning, time_dim=16)), scale=0.3)
    x, t, cond = torch.randn(4, 16), torch.tensor([0, 10, 500, 999]), torch.randn(4, 8)
    drop = torch.tensor([True, False, True, False])
    assert torch.equal(prior(x, t, prior.prepare(cond, 4)), prior(x, t, cond))
    assert torch.equal(prior(x, t, prior.prepare(cond, 4, drop)), prior(x, t, cond, drop))
    assert torch.equal(prior(x, t, prior.prepare(None, 4)), prior(x, t, None))
    assert not torch.equal(prior(x, t, prior.prepare(cond, 4)), prior(x, t, None))


def _reference_latents(model, embeddings, seed, steps, guidance, eta):
    """DDIM as the sampler did it before it prepared the condition: the prior sees the raw
    condition at every step. The noise comes from the sampler itself (guidance 0 ignores the
    face, so its latents are the starting noise denoised without any condition)."""
    cond = condition_rows(embeddings, model.config.embedding_dim)
    n, m, prior = cond.shape[0], model.latent_size, model.prior
    noise = torch.stack([torch.randn(m, generator=seeded_generator(seed, i, "start")) for i in range(n)])
    gens = [seeded_generator(seed, i, "steps") for i in range(n)]

    def denoise(x, t):
        both = prior(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, prior.null_cond.expand(n, -1)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    with torch.no_grad():
        return model.diffusion.ddim_sample(denoise, noise, steps, eta,
                                           lambda _: torch.stack([torch.randn(m, generator=g) for g in gens]))


@pytest.mark.parametrize("conditioning", ["adalora", "adanorm"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sampled_latents_are_those_of_the_plain_ddim_loop(conditioning, eta):
    cfg = load_train_config("tiny")
    config = HypernetConfig(layout=SMALL, embedding_model="x", autoencoder=cfg.autoencoder,
                            prior=PriorConfig(width=32, blocks=2, conditioning=conditioning, time_dim=16),
                            diffusion=cfg.diffusion)
    torch.manual_seed(0)
    model = Hypernet(config).eval()
    randomised(model.prior, seed=1, scale=0.3)
    faces = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(2)), dim=1)
    got = sample_latents(model, faces, seed=5, steps=8, guidance=3.0, eta=eta)
    assert torch.equal(got, _reference_latents(model, faces, 5, 8, 3.0, eta))


def test_all_finite_finds_every_kind_of_non_finite_value():
    values = torch.randn(10_000)
    assert all_finite(values)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = values.clone()
        broken[1234] = bad
        assert not all_finite(broken), bad


def test_apply_lora_shape_map_is_cached_per_base_model_without_keeping_it_alive(comfy, pack, tiny_sdxl):
    import comfy_support
    glue = importlib.import_module(f"{pack.__name__}.nodes.comfy_glue")
    fresh = glue.unet_lora_shapes(tiny_sdxl)
    assert tiny_sdxl.model in glue._unet_shapes
    assert glue.unet_lora_shapes(tiny_sdxl.clone()) == fresh  # clones share the base model's entry
    fresh["lora_te_added_by_a_caller"] = (1, 1)
    assert "lora_te_added_by_a_caller" not in glue.unet_lora_shapes(tiny_sdxl)

    other = comfy_support.tiny_sdxl_patcher(seed=1)
    assert glue.unet_lora_shapes(other) == glue.unet_lora_shapes(tiny_sdxl)
    cached = len(glue._unet_shapes)
    del other
    gc.collect()
    assert len(glue._unet_shapes) == cached - 1, "the cache must not keep a freed model alive"
