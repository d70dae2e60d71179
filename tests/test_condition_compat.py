"""Face-only hypernets are what they were before global features existed.

tests/data/face_only_golden.safetensors was written by tests/data/make_face_only_golden.py with
main's code at 5180c60 (before issue 7): config JSON, state-dict digest, sampled latents and
their decoded vectors of two tiny face-only models.

What is data must match exactly: the config JSON and the digest of the weights as saved and
loaded. What is computed (sampled latents, decoded vectors) matches within a tolerance: another
CPU kind or thread count sums floats in another order and FMA rounds differently, which moved
the samples in the last bits (issue 14). RTOL/ATOL sit far above that rounding (a float32 ulp is
6e-8 relative; 8 DDIM steps of a 2-block model amplify it by a few hundred at most) and far below
what any behaviour change does: the samples of two guidance settings, or of the two models,
differ by more than 1e-2 (asserted below, so the tolerance cannot silently swallow everything).
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


RTOL, ATOL = 1e-4, 1e-5
BEHAVIOUR_CHANGE = 1e-2  # the smallest difference between samples of different settings, at least


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(golden_maker.GOLDEN), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("variant", sorted(golden_maker.VARIANTS))
def test_old_face_only_checkpoint_loads_with_the_same_config_and_weights_and_samples_the_same(variant, golden,
                                                                                               tmp_path):
    tensors, metadata = golden
    model = golden_maker.build(variant, tmp_path)  # new code: build, save, load an old-style config
    assert model.config.to_json() == metadata[f"{variant}.config_json"]
    old_config = json.loads(metadata[f"{variant}.config_json"])
    assert "global_dim" not in old_config and "kind" not in old_config["prior"]
    assert model.prior.fusion is None
    assert golden_maker.state_digest(model) == metadata[f"{variant}.state_digest"]
    latents, _ = golden_maker.samples(model)
    for key, value in latents.items():
        torch.testing.assert_close(value, tensors[f"{variant}.latents_{key}"], rtol=RTOL, atol=ATOL, msg=key)
        # Decoding the recorded latents (data) tests the decoder alone, whatever sampling rounded.
        decoded = model.decode_latents(tensors[f"{variant}.latents_{key}"])
        torch.testing.assert_close(decoded, tensors[f"{variant}.vectors_{key}"], rtol=RTOL, atol=ATOL, msg=key)


def test_the_tolerance_tells_behaviours_apart(golden):
    """Every pair of recorded samples (other guidance, eta or model) differs far beyond it."""
    tensors, _ = golden
    latents = [v for k, v in sorted(tensors.items()) if ".latents_" in k]
    for i, a in enumerate(latents):
        for b in latents[i + 1:]:
            assert (a - b).abs().max() > BEHAVIOUR_CHANGE
            assert not torch.allclose(a, b, rtol=RTOL, atol=ATOL)


def test_golden_vectors_are_the_ones_main_recorded(golden):
    """The vector tensors were added later (issue 14); their bytes are what main's digests say."""
    tensors, metadata = golden
    for key in (k for k in metadata if ".vectors_" in k):
        assert golden_maker.tensor_digest(tensors[key]) == metadata[key], key


def test_face_only_model_has_no_new_parameters():
    from hypernet.model.hypernet import Hypernet, HypernetConfig
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig.from_dict(golden_maker.base_config_dict("adalora")))
    assert not any("fusion" in k for k in model.state_dict())
    assert {k.split(".")[0] for k in model.state_dict()} == {"vae", "prior", "norm"}
