"""Hypernet nodes in-process: Load Hypernet, Sample LoRA, Decode LoRA, and their errors."""
import dataclasses
import importlib
import os

import pytest
import torch

from hypernet.pipeline.training import train
from hypernet_support import SMALL_LAYOUT, make_dataset, quick_config


@pytest.fixture(scope="module")
def nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.hypernet_nodes")


@pytest.fixture(scope="module")
def values(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.values")


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{pack.__name__}.hypernet.errors")


@pytest.fixture(scope="module")
def hypernet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_hypernets")
    data = make_dataset(tmp_path_factory.mktemp("node_data"), identities=12)
    train(data, folder / "small.safetensors", quick_config(), progress=False)
    return folder


@pytest.fixture
def registered(comfy, nodes, hypernet_dir, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lora_hypernets", ([str(hypernet_dir)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield hypernet_dir
    folder_paths.filename_list_cache.clear()


def face(values, model="synthetic-uniform-sphere-512", seed=0):
    emb = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(seed)), dim=0)
    return values.FaceEmbeddingValue(emb, emb[None], model, (0,))


def test_load_lists_checkpoints_and_describes_them(nodes, registered):
    kind, options = nodes.LoadHypernet.INPUT_TYPES()["required"]["hypernet_name"]
    assert kind == "COMBO" and "small.safetensors" in options["options"]
    hypernet, info = nodes.LoadHypernet.execute("small.safetensors")
    assert "synthetic-uniform-sphere-512" in info and f"{SMALL_LAYOUT.num_values:,} values" in info
    assert len(hypernet.sha256) == 64


def test_a_truncated_checkpoint_is_a_clear_error(nodes, errors, registered):
    whole = (registered / "small.safetensors").read_bytes()
    (registered / "broken.safetensors").write_bytes(whole[:1000])
    try:
        with pytest.raises(errors.HypernetError, match="truncated or corrupt"):
            nodes.LoadHypernet.execute("broken.safetensors")
    finally:
        (registered / "broken.safetensors").unlink()


def test_sample_and_decode_make_the_same_lora_for_the_same_seed(nodes, values, registered):
    hypernet, _ = nodes.LoadHypernet.execute("small.safetensors")
    sample = lambda seed: nodes.SampleLoRA.execute(hypernet, face(values), seed, 5, 1.5, 0.0)[0]  # noqa: E731
    first, again, other = sample(11), sample(11), sample(12)
    assert torch.equal(first.latent, again.latent) and not torch.equal(first.latent, other.latent)
    (lora,) = nodes.DecodeLoRA.execute(hypernet, first)
    assert lora.layout == hypernet.hypernet.layout
    assert len(lora.state_dict) == 3 * len(SMALL_LAYOUT)
    assert all(k.startswith("lora_unet_") for k in lora.state_dict)
    assert lora.metadata["seed"] == "11" and lora.metadata["hypernet_file"] == "small.safetensors"
    assert lora.metadata["ss_network_dim"] == "4" and lora.metadata["ss_base_model_version"]


def test_face_from_another_face_model_is_refused(nodes, values, errors, registered):
    hypernet, _ = nodes.LoadHypernet.execute("small.safetensors")
    with pytest.raises(errors.HypernetError, match="synthetic-uniform-sphere-512.*insightface/buffalo_l"):
        nodes.SampleLoRA.execute(hypernet, face(values, "insightface/buffalo_l/w600k_r50.onnx"), 0, 5, 1.5, 0.0)


def test_latent_from_another_hypernet_is_refused(nodes, values, errors, registered):
    hypernet, _ = nodes.LoadHypernet.execute("small.safetensors")
    (latent,) = nodes.SampleLoRA.execute(hypernet, face(values), 0, 3, 1.0, 0.0)
    import dataclasses
    foreign = dataclasses.replace(latent, hypernet_sha256="0" * 64, hypernet_name="other.safetensors")
    with pytest.raises(errors.HypernetError, match="other.safetensors"):
        nodes.DecodeLoRA.execute(hypernet, foreign)


def test_a_replaced_file_is_loaded_again_and_wrong_values_get_a_message(nodes, errors, registered, hypernet_dir):
    # fingerprint_inputs (V3's IS_CHANGED): same file, same fingerprint; rewritten, a new one.
    before = nodes.LoadHypernet.fingerprint_inputs("small.safetensors")
    assert nodes.LoadHypernet.fingerprint_inputs("small.safetensors") == before
    path = hypernet_dir / "small.safetensors"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert nodes.LoadHypernet.fingerprint_inputs("small.safetensors") != before
    hypernet, _ = nodes.LoadHypernet.execute("small.safetensors")
    with pytest.raises(errors.HypernetError, match="face_embedding input got a dict.*Face Embed"):
        nodes.SampleLoRA.execute(hypernet, {"embedding": [0.0] * 512}, 0, 3, 1.0, 0.0)
    with pytest.raises(errors.HypernetError, match="hypernet input got a str.*Load Hypernet"):
        nodes.SampleLoRA.execute("small.safetensors", None, 0, 3, 1.0, 0.0)


def test_a_checkpoint_that_samples_ridge_to_the_lora_works_in_the_nodes(nodes, values, registered):
    """train --config auto may choose a point sampler (issue 19); the nodes get it through sampling.py."""
    from hypernet.model.checkpoint import load_hypernet, save_hypernet
    from hypernet.model.point_samplers import SamplerConfig
    model = load_hypernet(registered / "small.safetensors")
    model.config = dataclasses.replace(model.config, offset="ridge")  # ridge samplers live beside the ridge offset
    model.norm.register_buffer("offset_weight", torch.zeros(512, model.latent_size))
    model.norm.register_buffer("offset_bias", torch.zeros(model.latent_size))
    gen = torch.Generator().manual_seed(3)
    D = SMALL_LAYOUT.num_values
    tensors = {"ridge_in": torch.randn(512, 6, generator=gen), "ridge_out": 0.01 * torch.randn(6, D, generator=gen),
               "ridge_bias": 0.01 * torch.randn(D, generator=gen)}
    model.use_sampler(SamplerConfig("ridge-lora", rank=6), **tensors)
    save_hypernet(model, registered / "ridge.safetensors", {})
    try:
        hypernet, info = nodes.LoadHypernet.execute("ridge.safetensors")
        first = nodes.SampleLoRA.execute(hypernet, face(values), 11, 5, 1.5, 0.0)[0]
        other = nodes.SampleLoRA.execute(hypernet, face(values), 12, 3, 3.0, 0.0)[0]
        assert first.latent.shape == (1, 6) and torch.equal(first.latent, other.latent)  # no noise: no seed
        (lora,) = nodes.DecodeLoRA.execute(hypernet, first)
        emb = face(values).embedding[None]
        expected = (emb @ tensors["ridge_in"]) @ tensors["ridge_out"] + tensors["ridge_bias"]
        decoded = model.decode_samples(first.latent)
        assert torch.allclose(decoded, expected, atol=1e-5)
        assert len(lora.state_dict) == 3 * len(SMALL_LAYOUT) and "samples with: ridge-lora" in info
    finally:
        (registered / "ridge.safetensors").unlink()
