"""Unit tests of the hypernet's parts: diffusion maths, denoiser conditioning, autoencoders."""
import math

import pytest
import torch

from hypernet.model.autoencoder import AutoencoderConfig, build_autoencoder, delta_sq_error
from hypernet.model.diffusion import PREDICTIONS, Diffusion, DiffusionConfig, cosine_alphas_cumprod
from hypernet.errors import HypernetError
from hypernet.lora.layout import Layout
from hypernet.lora.presets import preset
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.denoiser_mlp import AdaLoraBlock, Denoiser
from hypernet.model.lowrank import rescaled
from hypernet.model.prior_config import PriorConfig
from hypernet.lora.vectorize import module_views
from random_weights import randomised

SMALL = Layout(preset("tiny-attn-r4").modules[:6], "sdxl")


def test_cosine_schedule_runs_from_clean_to_pure_noise():
    abar = cosine_alphas_cumprod(1000)
    assert abar.shape == (1000,)
    assert bool((abar[1:] < abar[:-1]).all())
    assert abar[0] > 0.999 and abar[-1] < 1e-4


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_and_split_are_inverse(prediction):
    diffusion = Diffusion(DiffusionConfig(prediction=prediction))
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = diffusion.add_noise(x0, noise, t)
    got_x0, got_eps = diffusion.split(diffusion.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(got_x0, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(got_eps[:, :], noise, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_with_an_oracle_denoiser_lands_on_the_data(prediction, eta):
    """A denoiser that knows x0 makes DDIM end exactly at x0, for every target and eta."""
    diffusion = Diffusion(DiffusionConfig(prediction=prediction))
    x0 = torch.randn(3, 4, dtype=torch.float64)
    abar = diffusion.alphas_cumprod

    def oracle(x_t, t):
        a, b = abar[t].sqrt()[:, None], (1 - abar[t]).sqrt()[:, None]
        eps = (x_t - a * x0) / b
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]

    calls = []
    out = diffusion.ddim_sample(oracle, torch.randn(3, 4, dtype=torch.float64), steps=10, eta=eta,
                                step_noise=lambda i: torch.randn(3, 4, dtype=torch.float64), callback=calls.append)
    torch.testing.assert_close(out, x0)
    assert calls == list(range(1, 11))


def test_ddim_timesteps_cover_the_schedule():
    diffusion = Diffusion(DiffusionConfig())
    assert diffusion.ddim_timesteps(25)[0] == 999 and diffusion.ddim_timesteps(25)[-1] == 0
    assert len(diffusion.ddim_timesteps(25)) == 25
    assert diffusion.ddim_timesteps(1) == [999]
    with pytest.raises(HypernetError, match="steps"):
        diffusion.ddim_timesteps(0)


def test_bad_config_values_are_refused():
    with pytest.raises(HypernetError, match="prediction"):
        DiffusionConfig(prediction="score")
    with pytest.raises(HypernetError, match="conditioning"):
        PriorConfig(conditioning="film")
    with pytest.raises(HypernetError, match="kind"):
        AutoencoderConfig(kind="transformer")


@pytest.mark.parametrize("conditioning", ["adanorm", "adalora"])
def test_denoiser_output_depends_on_the_condition_and_null_means_dropped(conditioning):
    prior = randomised(Denoiser(16, 8, 1000, PriorConfig(width=32, blocks=2, conditioning=conditioning, time_dim=16)))
    x, t = torch.randn(4, 16), torch.tensor([1, 100, 500, 999])
    cond = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    other = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert not torch.allclose(prior(x, t, cond), prior(x, t, other))
    dropped = prior(x, t, cond, drop=torch.tensor([True, False, True, False]))
    unconditional = prior(x, t, None)
    torch.testing.assert_close(dropped[[0, 2]], unconditional[[0, 2]])
    torch.testing.assert_close(dropped[[1, 3]], prior(x, t, cond)[[1, 3]])


def test_adalora_factors_have_the_target_spread_whatever_the_condition_scale():
    block = randomised(AdaLoraBlock(width=32, emb_dim=16, cond_dim=8, rank=4))
    for scale in (0.01, 100.0):
        a, b = block.factors(block.cond_norm(torch.randn(3, 8) * scale)).view(-1, 2, 32, 4).unbind(1)
        a, b = rescaled(a, 32 ** -0.5), rescaled(b, 4 ** -0.5)
        torch.testing.assert_close(a.std(dim=(1, 2)), torch.full((3,), 32 ** -0.5), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(b.std(dim=(1, 2)), torch.full((3,), 0.5), rtol=1e-3, atol=1e-5)


def test_gated_adalora_block_starts_without_its_low_rank_term_and_learns_it():
    """A zero gate makes a fresh gated block the ungated block minus h A(c) B(c)^T; one step of
    training opens the gate and makes the factors' generator receive a gradient."""
    torch.manual_seed(0)
    gated = AdaLoraBlock(width=32, emb_dim=16, cond_dim=8, rank=4, gate=True)
    plain = AdaLoraBlock(width=32, emb_dim=16, cond_dim=8, rank=4)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "gate"})
    h, time_emb, raw = torch.randn(3, 32), torch.randn(3, 16), torch.randn(3, 8)
    prepared = gated.prepare(raw, torch.randn(3, 16))
    embedded = prepared[2]
    x = plain.norm(h + plain.time(torch.nn.functional.silu(time_emb + embedded)))
    without_term = h + plain.fc2(torch.nn.functional.silu(plain.fc1(x)))
    torch.testing.assert_close(gated(h, time_emb, prepared), without_term)
    assert not torch.allclose(plain(h, time_emb, prepared), without_term)

    gated(h, time_emb, gated.prepare(raw, torch.randn(3, 16))).square().sum().backward()
    assert gated.gate.grad.abs().sum() > 0
    torch.optim.SGD(gated.parameters(), lr=0.1).step()
    gated.zero_grad()
    gated(h, time_emb, gated.prepare(raw, torch.randn(3, 16))).square().sum().backward()
    assert gated.factors.weight.grad.abs().sum() > 0


def test_adalora_gate_is_saved_only_when_used_and_refused_where_it_means_nothing():
    ungated = PriorConfig(width=32, blocks=2, conditioning="adalora", time_dim=16)
    gated = PriorConfig(width=32, blocks=2, conditioning="adalora", time_dim=16, adalora_gate=True)
    assert "adalora_gate" not in ungated.to_dict() and gated.to_dict()["adalora_gate"] is True
    assert not any("gate" in k for k in Denoiser(16, 8, 1000, ungated).state_dict())
    assert sum("gate" in k for k in Denoiser(16, 8, 1000, gated).state_dict()) == 2
    with pytest.raises(HypernetError, match="adalora_gate"):
        PriorConfig(conditioning="adanorm", adalora_gate=True)
    with pytest.raises(HypernetError, match="adalora_gate"):
        PriorConfig(kind="transformer", conditioning="adalora", adalora_gate=True)


def test_chunk_autoencoder_parameters_do_not_grow_with_the_layout():
    cfg = AutoencoderConfig(kind="chunks", chunk=256, token_dim=4, hidden=32, blocks=1)
    small, large = build_autoencoder(10_000, cfg), build_autoencoder(1_000_000, cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) == count(large)
    assert large.latent_size == math.ceil(1_000_000 / 256) * 4
    x = torch.randn(2, 10_000)
    mean, logvar = small.encode(x)
    assert mean.shape == logvar.shape == (2, small.latent_size)
    assert small.decode(mean).shape == (2, 10_000)


def test_sdxl_scale_hypernet_fits_the_parameter_budget():
    """sdxl-attn-r4 with the `sdxl` training preset: the autoencoder stays under 50 M parameters."""
    from hypernet.pipeline.training import load_train_config
    cfg = load_train_config("sdxl")
    config = HypernetConfig(layout=preset("sdxl-attn-r4"), embedding_model="x", autoencoder=cfg.autoencoder,
                            prior=cfg.prior, diffusion=cfg.diffusion)
    with torch.device("meta"):
        model = Hypernet(config)
    assert model.parameter_counts()["autoencoder"] <= 50_000_000
    assert model.latent_size == math.ceil(5_806_080 / cfg.autoencoder.chunk) * cfg.autoencoder.token_dim


def test_delta_error_equals_the_dense_computation():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, SMALL.num_values, generator=gen)
    b = torch.randn(3, SMALL.num_values, generator=gen)
    dense = torch.zeros(3)
    for (ua, da), (ub, db) in zip(module_views(a, SMALL).values(), module_views(b, SMALL).values()):
        dense += (ua @ da - ub @ db).square().sum((1, 2))
    torch.testing.assert_close(delta_sq_error(a, b, SMALL), dense, rtol=1e-4, atol=1e-3)
    assert float(delta_sq_error(a, a, SMALL).abs().max()) < 1e-2 * float(dense.min())


def test_reference_factors_are_the_best_rank_r_fit_of_the_mean_delta_and_align_keeps_delta_w():
    from hypernet.lora.alignment import align, reference_factors
    gen = torch.Generator().manual_seed(3)
    vectors = torch.randn(70, SMALL.num_values, generator=gen)
    reference = reference_factors(vectors, SMALL, chunk_rows=16)  # several chunks
    aligned = align(vectors, reference, SMALL)
    for name, (up, down) in module_views(reference[None], SMALL).items():
        ups, downs = module_views(vectors, SMALL)[name]
        mean_delta = (ups.double() @ downs.double()).mean(0)
        u, s, vh = torch.linalg.svd(mean_delta)
        r = up.shape[-1]
        best = (u[:, :r] * s[:r]) @ vh[:r]
        torch.testing.assert_close((up[0] @ down[0]).double(), best, rtol=1e-4, atol=1e-5)
        a_up, a_down = module_views(aligned, SMALL)[name]
        torch.testing.assert_close(a_up @ a_down, ups @ downs, rtol=1e-4, atol=1e-4)
