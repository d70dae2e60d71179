"""Face-only hypernets are what they were before global features existed.

tests/data/face_only_golden.safetensors was written by tests/data/make_face_only_golden.py with
main's code at 5180c60 (before issue 7): config JSON, state-dict digest and sampled latents of
two tiny face-only models. The current code must reproduce all of them bit for bit.
Bit for bit holds for the same CPU kind and torch thread count: a float sum split over
another number of threads rounds differently, so the test runs with the golden file's 2.
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

DATA = Path(__file__).parent / "data"
spec = importlib.util.spec_from_file_location("make_face_only_golden", DATA / "make_face_only_golden.py")
golden_maker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden_maker)


GOLDEN_THREADS = 2  # torch threads when the golden file was written (the CI machine's cores)


@pytest.fixture(autouse=True)
def golden_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(GOLDEN_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(golden_maker.GOLDEN), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("variant", sorted(golden_maker.VARIANTS))
def test_old_face_only_checkpoint_loads_and_samples_bit_identically(variant, golden, tmp_path):
    tensors, metadata = golden
    model = golden_maker.build(variant, tmp_path)  # new code: build, save, load an old-style config
    assert model.config.to_json() == metadata[f"{variant}.config_json"]
    old_config = json.loads(metadata[f"{variant}.config_json"])
    assert "global_dim" not in old_config and "kind" not in old_config["prior"]
    assert model.prior.fusion is None
    assert golden_maker.state_digest(model) == metadata[f"{variant}.state_digest"]
    latents, vector_digests = golden_maker.samples(model)
    for key, value in latents.items():
        assert torch.equal(value, tensors[f"{variant}.latents_{key}"]), key
        assert vector_digests[key] == metadata[f"{variant}.vectors_{key}"], key


def test_face_only_model_has_no_new_parameters():
    from hypernet.model.hypernet import Hypernet, HypernetConfig
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig.from_dict(golden_maker.base_config_dict("adalora")))
    assert not any("fusion" in k for k in model.state_dict())
    assert {k.split(".")[0] for k in model.state_dict()} == {"vae", "prior", "norm"}
