"""Encode Global Image Features and Sample LoRA's condition inputs, in-process."""
import dataclasses
import importlib

import pytest
import torch

from global_support import COMFY_CONFIG, TINY_ARCH, TINY_DIM, comfy_clip_vision, tiny_encoder_info, write_comfy_file
from hypernet.model.checkpoint import save_hypernet
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet_support import SMALL_LAYOUT

FACE_MODEL = "synthetic-uniform-sphere-512"


@pytest.fixture(scope="module")
def nodes(pack):
    return {name: importlib.import_module(f"{pack.__name__}.nodes.{name}")
            for name in ("global_nodes", "hypernet_nodes", "values")}


@pytest.fixture(scope="module")
def errors(pack):
    return importlib.import_module(f"{pack.__name__}.hypernet.errors")


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    return comfy_clip_vision(write_comfy_file(tmp_path_factory.mktemp("clip_vision") / "tiny.safetensors"))


def untrained(condition: str, encoder: dict | None) -> Hypernet:
    """Sampling and wiring need no training: an initialised model of each condition."""
    global_keys = {"global_dim": encoder["dim"], "global_encoder": encoder} if encoder else {}
    model = Hypernet(HypernetConfig.from_dict({
        "layout": SMALL_LAYOUT.to_dict(), "embedding_model": FACE_MODEL, "embedding_dim": 512, "condition": condition,
        "autoencoder": {"kind": "mlp", "latent_dim": 16, "hidden": 24, "blocks": 1},
        "prior": {"width": 32, "blocks": 2, "time_dim": 16},
        "diffusion": {"timesteps": 1000, "prediction": "x0", "schedule": "cosine"}, **global_keys}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # initialised output layers are zero: noise everywhere, so inputs matter
        for name, tensor in sorted(model.state_dict().items()):
            values = torch.randn(tensor.shape, generator=gen) * 0.2
            tensor.copy_(values.abs() + 0.5 if name.endswith("std") else values)
    return model


@pytest.fixture(scope="module")
def hypernet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_hypernets")
    info = tiny_encoder_info()
    for condition, encoder in (("face", None), ("global", info), ("face+global", info)):
        save_hypernet(untrained(condition, encoder), folder / f"{condition.replace('+', '_')}.safetensors")
    other = dict(info, fingerprint="0123456789abcdef")  # same architecture, other weights
    save_hypernet(untrained("face+global", other), folder / "other_weights.safetensors")
    return folder


@pytest.fixture
def load(comfy, nodes, hypernet_dir, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lora_hypernets", ([str(hypernet_dir)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield lambda name: nodes["hypernet_nodes"].LoadHypernet.execute(name)[0]
    folder_paths.filename_list_cache.clear()


def face(nodes, seed=0):
    emb = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(seed)), dim=0)
    return nodes["values"].FaceEmbeddingValue(emb, emb[None], FACE_MODEL, (0,))


def photos(n=3, seed=0):
    return torch.rand(n, 72, 96, 3, generator=torch.Generator().manual_seed(seed))


def test_encode_averages_the_photos_and_names_the_encoder(nodes, clip_vision):
    (value,) = nodes["global_nodes"].EncodeGlobalImageFeatures.execute(clip_vision, photos())
    assert value.per_image.shape == (3, TINY_DIM) and value.features.shape == (TINY_DIM,)
    assert torch.allclose(value.per_image.norm(dim=-1), torch.ones(3), atol=1e-5)
    mean = value.per_image.mean(0)
    assert torch.allclose(value.features, mean / mean.norm(), atol=1e-6)
    assert value.encoder == tiny_encoder_info() and TINY_ARCH in value.architectures
    (one,) = nodes["global_nodes"].EncodeGlobalImageFeatures.execute(clip_vision, photos()[:1])
    assert torch.allclose(one.features, value.per_image[0], atol=1e-6)


def test_sample_lora_takes_what_the_condition_needs(nodes, clip_vision, load):
    (features,) = nodes["global_nodes"].EncodeGlobalImageFeatures.execute(clip_vision, photos())
    sample = nodes["hypernet_nodes"].SampleLoRA.execute
    both = lambda **kw: sample(load("face_global.safetensors"), seed=7, steps=4, guidance=2.0, **kw)[0]  # noqa: E731
    first = both(face_embedding=face(nodes), global_features=features)
    again = both(face_embedding=face(nodes), global_features=features)
    other_photos = both(face_embedding=face(nodes), global_features=nodes["global_nodes"].EncodeGlobalImageFeatures
                        .execute(clip_vision, photos(seed=1))[0])
    assert torch.equal(first.latent, again.latent) and not torch.equal(first.latent, other_photos.latent)
    assert first.embedding_model == f"{FACE_MODEL} + {TINY_ARCH}"
    (global_only,) = sample(load("global.safetensors"), seed=7, steps=4, guidance=2.0, global_features=features)
    assert global_only.latent.shape == first.latent.shape
    (face_only,) = sample(load("face.safetensors"), seed=7, steps=4, guidance=2.0, face_embedding=face(nodes))
    assert face_only.embedding_model == FACE_MODEL


def test_wrong_wiring_names_the_socket(nodes, errors, clip_vision, load):
    (features,) = nodes["global_nodes"].EncodeGlobalImageFeatures.execute(clip_vision, photos())
    sample = nodes["hypernet_nodes"].SampleLoRA.execute
    err = errors.HypernetError
    with pytest.raises(err, match="'face\\+global': connect Encode Global Image Features .*global_features input"):
        sample(load("face_global.safetensors"), steps=3, face_embedding=face(nodes))
    with pytest.raises(err, match="connect a Face Embed output to Sample LoRA's face_embedding"):
        sample(load("face_global.safetensors"), steps=3, global_features=features)
    with pytest.raises(err, match="reads no face embedding: disconnect Sample LoRA's face_embedding"):
        sample(load("global.safetensors"), steps=3, face_embedding=face(nodes), global_features=features)
    with pytest.raises(err, match="reads no global image features: disconnect"):
        sample(load("face.safetensors"), steps=3, face_embedding=face(nodes), global_features=features)
    with pytest.raises(err, match="connect a Face Embed"):
        sample(load("face.safetensors"), steps=3)


def test_features_of_another_encoder_are_refused(nodes, errors, clip_vision, load):
    (features,) = nodes["global_nodes"].EncodeGlobalImageFeatures.execute(clip_vision, photos())
    sample = nodes["hypernet_nodes"].SampleLoRA.execute
    with pytest.raises(errors.HypernetError, match="different weights"):
        sample(load("other_weights.safetensors"), steps=3, face_embedding=face(nodes), global_features=features)
    renamed = dataclasses.replace(features, encoder=dict(features.encoder, name="ViT-H-14"), architectures=("ViT-H-14",))
    with pytest.raises(errors.HypernetError, match="ViT-H-14.*different architecture"):
        sample(load("face_global.safetensors"), steps=3, face_embedding=face(nodes), global_features=renamed)


def test_image_encoders_without_projection_are_refused(nodes, errors, comfy, tmp_path):
    import json

    import comfy.clip_vision
    config = {k: v for k, v in COMFY_CONFIG.items() if k != "projection_dim"}  # as SigLIP configs are
    (tmp_path / "config.json").write_text(json.dumps(config))
    unprojected = comfy.clip_vision.ClipVisionModel(str(tmp_path / "config.json"))
    with pytest.raises(errors.HypernetError, match="CLIP ViT image encoder with a projection"):
        nodes["global_nodes"].EncodeGlobalImageFeatures.execute(unprojected, photos(1))


def test_sample_lora_inputs_keep_saved_workflows_valid(nodes):
    spec = nodes["hypernet_nodes"].SampleLoRA.INPUT_TYPES()
    # widgets (what saved workflows store by position) are unchanged; the conditions are links
    assert list(spec["required"]) == ["hypernet", "seed", "steps", "guidance", "eta"]
    assert {k: v[0] for k, v in spec["optional"].items()} == {"face_embedding": "LORA_HYPERNET_FACE_EMBEDDING",
                                                               "global_features": "LORA_HYPERNET_GLOBAL_FEATURES"}
