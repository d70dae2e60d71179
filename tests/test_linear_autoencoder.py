"""The `linear` autoencoder: principal directions fitted in closed form (issue 17)."""
import json

import pytest
import torch
from hypernet_support import make_dataset, quick_config
from safetensors import safe_open

from hypernet.errors import HypernetError
from hypernet.model.autoencoder import AutoencoderConfig, build_autoencoder, directions_above_noise
from hypernet.model.checkpoint import load_hypernet
from hypernet.pipeline.sampling import decode_lora, sample_latents
from hypernet.pipeline.training import train

LINEAR = {"kind": "linear", "latent_dim": 6}


DIRECTIONS = torch.linalg.qr(torch.randn(300, 3, generator=torch.Generator().manual_seed(7)))[0].T  # [3, 300]


def _signal_plus_noise(rows: int, dim: int = 300, rank: int = 3, noise: float = 0.05, seed: int = 0):
    """Rows on a fixed `rank`-dimensional subspace (the part identities share) plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    directions = DIRECTIONS[:rank, :dim]
    scales = torch.tensor([5.0, 3.0, 2.0])[:rank]
    signal = (torch.randn(rows, rank, generator=g) * scales) @ directions
    return signal + noise * torch.randn(rows, dim, generator=g), directions


@pytest.mark.parametrize("rows", [200, 600])  # fewer and more rows than values: both sides of the Gram matrix
def test_the_directions_above_the_noise_are_the_planted_ones(rows):
    data, directions = _signal_plus_noise(rows)
    found = directions_above_noise(data - data.mean(0)).float()
    assert found.shape == (3, 300)
    assert torch.allclose(found @ found.T, torch.eye(3), atol=1e-5)
    assert bool(((directions @ found.T).norm(dim=1) > 0.99).all())  # the same subspace
    noise = torch.randn(rows, 300, generator=torch.Generator().manual_seed(3))
    assert len(directions_above_noise(noise - noise.mean(0))) == 0
    # a fourth direction counts once its spread stands out of the noise (0.05 per value, 300 values)
    extra = torch.randn(rows, 1, generator=torch.Generator().manual_seed(4)) * DIRECTIONS[:1].roll(1, 1)
    for spread, rank in ((0.02, 3), (1.0, 4)):
        mixed = data + spread * extra
        assert len(directions_above_noise(mixed - mixed.mean(0))) == rank


def test_fit_finds_the_shared_subspace_and_keeps_it_through_encode_and_decode():
    data, directions = _signal_plus_noise(200)
    vae = build_autoencoder(300, AutoencoderConfig(kind="linear", latent_dim=4))
    vae.fit(data - data.mean(0))
    basis = vae.basis.detach()
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)  # orthonormal rows
    # the three signal directions lie in the span of the first three basis rows
    inside = (directions @ basis[:3].T).norm(dim=1)
    assert bool((inside > 0.99).all()), inside
    fresh, _ = _signal_plus_noise(50, seed=1)  # new identities on the same subspace
    mean, logvar = vae.encode(fresh)
    relative = (vae.decode(mean) - fresh).norm() / fresh.norm()
    assert relative < 0.2  # only the noise is lost
    assert bool((logvar == logvar.min()).all())  # a point posterior: sampling noise adds nothing


def test_fit_is_deterministic_and_pads_beyond_the_data_rank_with_zeros():
    data, _ = _signal_plus_noise(5)  # 5 rows: rank at most 5 after centring, 4
    first = build_autoencoder(300, AutoencoderConfig(kind="linear", latent_dim=8))
    second = build_autoencoder(300, AutoencoderConfig(kind="linear", latent_dim=8))
    first.fit(data - data.mean(0), seed=3)
    second.fit(data - data.mean(0), seed=3)
    assert torch.equal(first.basis, second.basis)
    assert bool((first.basis[5:] == 0).all()) and bool((first.basis[:4].norm(dim=1) > 0.99).all())
    rows = first.basis[:4]
    assert bool((rows.gather(1, rows.abs().argmax(1, keepdim=True)) > 0).all())  # the sign rule


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("linear")
    data = make_dataset(folder)
    out = folder / "linear.safetensors"
    train(data, out, quick_config(autoencoder=LINEAR), progress=False)
    return data, out


def test_training_fits_it_without_steps_and_the_checkpoint_loads(linear_run):
    data, out = linear_run
    model = load_hypernet(out)
    assert model.config.autoencoder.kind == "linear"
    with safe_open(str(out), framework="pt") as f:
        vae_keys = [k for k in f.keys() if k.startswith("vae.")]
        config = json.loads(f.metadata()["config"])
    assert vae_keys == ["vae.basis"] and config["autoencoder"]["kind"] == "linear"
    basis = model.vae.basis
    assert torch.allclose(basis @ basis.T, torch.eye(6), atol=1e-4)
    lora = decode_lora(model, sample_latents(model, torch.nn.functional.normalize(torch.randn(2, 512), dim=1),
                                             seed=0)[:1])
    assert all(torch.isfinite(m.up).all() and torch.isfinite(m.down).all() for m in lora.values())


def test_a_resumed_linear_run_equals_the_straight_one(linear_run, tmp_path):
    data, straight = linear_run
    out = tmp_path / "resumed.safetensors"

    def interrupt(phase, step):
        if (phase, step) == ("prior", 6):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, out, quick_config(autoencoder=LINEAR), progress=False, on_step=interrupt)
    train(data, out, quick_config(autoencoder=LINEAR), progress=False, resume=True)
    with safe_open(str(out), framework="pt") as a, safe_open(str(straight), framework="pt") as b:
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())


def test_its_unused_blocks_field_does_not_make_a_checkpoint_unloadable(linear_run, tmp_path):
    """A hand-written config may leave `blocks` at the mlp default: a linear autoencoder has none."""
    from safetensors.torch import load_file, save_file
    _, out = linear_run
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    config["autoencoder"]["blocks"] = 2
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(out)), str(edited), {**metadata, "config": json.dumps(config)})
    assert load_hypernet(edited).config.autoencoder.blocks == 2
    config["autoencoder"]["latent_dim"] = 10**6  # more than the file's tensors hold
    save_file(load_file(str(out)), str(edited), {**metadata, "config": json.dumps(config)})
    with pytest.raises(HypernetError, match="latent_dim"):
        load_hypernet(edited)
