"""Gated fusion of face and global features, the transformer denoiser, and the condition in
configs, checkpoints and sampling (unit level; training end to end is in test_condition_training.py)."""
import json

import pytest
import torch
import torch.nn.functional as F

from hypernet.model.checkpoint import load_hypernet, save_hypernet
from hypernet.model.condition import GatedFusion, GlobalProjection, build_fusion, needs_face, needs_global
from hypernet.errors import HypernetError
from hypernet.common.files import save_safetensors_atomic
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.denoiser_mlp import Denoiser
from hypernet.model.denoisers import build_denoiser
from hypernet.model.prior_config import PriorConfig
from hypernet.model.denoiser_transformer import TransformerDenoiser
from hypernet.pipeline.sampling import sample_latents
from hypernet_support import SMALL_LAYOUT

ENCODER = {"name": "test-clip", "dim": 24, "fingerprint": "synthetic"}


def _unit_rows(n, dim, seed):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _randomised(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def _config(condition="face+global", **prior):
    extra = dict(global_dim=24, global_encoder=dict(ENCODER)) if condition != "face" else {}
    return HypernetConfig(layout=SMALL_LAYOUT, embedding_model="test-face", embedding_dim=32, condition=condition,
                          autoencoder=dict_to_ae(), prior=PriorConfig(**{"width": 32, "blocks": 2, "time_dim": 16,
                                                                        "token_width": 16, "depth": 2, "heads": 2,
                                                                        "tokens": 5, **prior}), **extra)


def dict_to_ae():
    from hypernet.model.autoencoder import AutoencoderConfig
    return AutoencoderConfig(latent_dim=12, hidden=16, blocks=1)


def _model(condition="face+global", **prior):
    torch.manual_seed(0)
    return _randomised(Hypernet(_config(condition, **prior))).eval()


# --- fusion --------------------------------------------------------------------------------------

def test_condition_names():
    assert needs_face("face") and not needs_global("face")
    assert needs_global("global") and not needs_face("global")
    assert needs_face("face+global") and needs_global("face+global")
    with pytest.raises(HypernetError, match="condition must be one of"):
        needs_face("clip")


def test_fresh_fusion_is_the_face_alone_and_trained_experts_add_gated_corrections():
    face, glob = _unit_rows(5, 32, 1), _unit_rows(5, 24, 2)
    assert torch.equal(GatedFusion(32, 24, 32)(face, glob), face)  # zero-initialised experts
    fusion = _randomised(GatedFusion(32, 24, 32))
    weights = fusion.gate_weights(face, glob)
    assert weights.shape == (5, 3) and bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(1), torch.ones(5))
    cond = fusion(face, glob)
    assert cond.shape == (5, 32)
    # Both inputs matter, and the output is the face plus the gate-weighted sum of the experts.
    assert not torch.allclose(fusion(face, _unit_rows(5, 24, 3)), cond)
    assert not torch.allclose(fusion(_unit_rows(5, 32, 4), glob), cond)
    experts = torch.stack([fusion.face_expert(face), fusion.global_expert(glob),
                           fusion.joint_expert(torch.cat([face, glob], 1))], 1)
    torch.testing.assert_close(cond, face + (weights.unsqueeze(-1) * experts).sum(1))
    with pytest.raises(HypernetError, match="must equal the face embedding size"):
        GatedFusion(32, 24, 16)


def test_fusion_parts_split_the_condition_into_face_and_penalised_global_corrections():
    fusion = _randomised(GatedFusion(32, 24, 32))
    face, glob = _unit_rows(4, 32, 1), _unit_rows(4, 24, 2)
    face_part, global_part = fusion.parts(face, glob)
    torch.testing.assert_close(face_part + global_part, fusion(face, glob))
    weights = fusion.gate_weights(face, glob)
    torch.testing.assert_close(face_part, face + weights[:, :1] * fusion.face_expert(face))
    from hypernet.pipeline.training import TrainConfig
    with pytest.raises(HypernetError, match="global_penalty must not be negative"):
        TrainConfig(global_penalty=-0.1)


def test_fresh_face_and_global_prior_predicts_what_the_face_only_prior_predicts():
    # Where the LoRAs ignore the global features, training starts from the right answer.
    face_only, both = _model("face"), Hypernet(_config("face+global")).eval()
    both.prior.load_state_dict(face_only.prior.state_dict(), strict=False)  # all but the fusion
    x, t = torch.randn(3, face_only.latent_size), torch.tensor([5, 400, 900])
    face, glob = _unit_rows(3, 32, 0), _unit_rows(3, 24, 1)
    with torch.no_grad():
        expected = face_only.prior(x, t, face_only.condition_vectors(face, None))
        assert torch.equal(both.prior(x, t, both.condition_vectors(face, glob)), expected)
        assert not torch.equal(expected, torch.zeros_like(expected))


def test_global_mode_projects_global_features_only_and_face_mode_has_no_module():
    projection = build_fusion("global", 32, 24, 32)
    assert isinstance(projection, GlobalProjection)
    glob = _unit_rows(3, 24, 0)
    assert projection(None, glob).shape == (3, 32)
    assert build_fusion("face", 32, 0, 32) is None
    with pytest.raises(HypernetError, match="needs global features"):
        build_fusion("face+global", 32, 0, 32)


# --- denoisers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("conditioning", ["adanorm", "adalora"])
def test_transformer_denoiser_pads_the_latent_and_uses_the_condition(conditioning):
    cfg = PriorConfig(kind="transformer", conditioning=conditioning, tokens=4, token_width=16, depth=2, heads=2,
                      time_dim=16)
    prior = build_denoiser(10, 8, 1000, cfg)  # 10 values: 4 tokens of 3, two padded
    assert isinstance(prior, TransformerDenoiser) and prior.piece == 3
    x, t = torch.randn(4, 10), torch.tensor([0, 10, 500, 999])
    cond = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.equal(prior(x, t, cond), torch.zeros(4, 10))  # zero-initialised output, like the MLP
    _randomised(prior)
    out = prior(x, t, cond)
    assert out.shape == (4, 10)
    assert not torch.allclose(out, prior(x, t, F.normalize(torch.randn(4, 8), dim=1)))
    dropped = prior(x, t, cond, drop=torch.tensor([True, False, True, False]))
    torch.testing.assert_close(dropped[[0, 2]], prior(x, t, None)[[0, 2]])
    torch.testing.assert_close(dropped[[1, 3]], out[[1, 3]])
    # rows are independent: a batch gives each row what it gives alone
    torch.testing.assert_close(prior(x[:1], t[:1], cond[:1]), out[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conditioning", ["adanorm", "adalora"])
def test_transformer_denoiser_learns_a_conditional_map_on_tiny_data(conditioning):
    torch.manual_seed(0)
    cfg = PriorConfig(kind="transformer", conditioning=conditioning, tokens=4, token_width=32, depth=2, heads=2,
                      time_dim=16, cond_dropout=0.0)
    prior = TransformerDenoiser(16, 8, 1000, cfg)
    cond = F.normalize(torch.randn(8, 8), dim=1)
    x0 = torch.randn(8, 16)  # one latent per condition: x0-prediction must learn cond -> latent
    t = torch.full((8,), 999)  # pure noise: only the condition tells the rows apart
    noisy = torch.randn(8, 16)
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = F.mse_loss(prior(noisy, t, cond), x0)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.1 * first


def test_prior_config_kind_defaults_to_mlp_and_mlp_configs_keep_their_old_fields():
    old = {"width": 64, "blocks": 2, "conditioning": "adanorm", "adalora_rank": 4, "time_dim": 32, "cond_dropout": 0.1}
    cfg = PriorConfig(**old)
    assert cfg.kind == "mlp" and cfg.to_dict() == old
    assert isinstance(build_denoiser(8, 4, 100, cfg), Denoiser)
    transformer = PriorConfig(**old, kind="transformer")
    assert transformer.to_dict() == {**old, "kind": "transformer"}
    assert PriorConfig(**PriorConfig(**old, tokens=5).to_dict()).tokens == 5
    with pytest.raises(HypernetError, match="kind"):
        PriorConfig(kind="rnn")
    with pytest.raises(HypernetError, match="multiple of heads"):
        PriorConfig(kind="transformer", token_width=30, heads=4)


# --- config and checkpoint -----------------------------------------------------------------------

def test_config_records_the_condition_and_refuses_inconsistent_ones():
    cfg = _config()
    data = cfg.to_dict()
    assert data["condition"] == "face+global" and data["global_dim"] == 24 and data["global_encoder"] == ENCODER
    assert HypernetConfig.from_dict(json.loads(cfg.to_json())) == cfg
    face = _config("face").to_dict()
    assert "global_dim" not in face and "global_encoder" not in face
    bad = [({**data, "condition": "clip"}, "condition must be one of"),
           ({**data, "global_dim": 0}, "needs global_dim"),
           ({**data, "global_encoder": None}, "image-encoder record"),
           ({**data, "global_encoder": {**ENCODER, "dim": 7}}, "gives 7 values"),
           ({**face, "global_dim": 24, "global_encoder": ENCODER}, "takes no global features")]
    for values, message in bad:
        with pytest.raises(HypernetError, match=message):
            HypernetConfig.from_dict(values)


@pytest.mark.parametrize("condition,kind", [("face+global", "mlp"), ("global", "transformer"),
                                            ("face+global", "transformer")])
def test_checkpoint_round_trip_keeps_condition_fusion_and_samples(condition, kind, tmp_path):
    model = _model(condition, kind=kind)
    assert any(k.startswith("prior.fusion.") for k in model.state_dict())
    path = tmp_path / "model.safetensors"
    save_hypernet(model, path)
    loaded = load_hypernet(path)
    assert loaded.config == model.config
    face = _unit_rows(2, 32, 5) if needs_face(condition) else None
    glob = _unit_rows(2, 24, 6)
    a = sample_latents(model, face, global_features=glob, seed=1, steps=4, guidance=2.0)
    b = sample_latents(loaded, face, global_features=glob, seed=1, steps=4, guidance=2.0)
    assert torch.equal(a, b)
    # row independence and the global features matter
    single = sample_latents(loaded, None if face is None else face[:1], global_features=glob[:1], seed=1, steps=4,
                            guidance=2.0)
    torch.testing.assert_close(single[0], b[0], atol=1e-5, rtol=1e-5)
    other = sample_latents(loaded, face, global_features=_unit_rows(2, 24, 7), seed=1, steps=4, guidance=2.0)
    assert not torch.allclose(other, b)


def test_checkpoint_with_an_invalid_condition_is_refused(tmp_path):
    from safetensors.torch import load_file
    path = tmp_path / "model.safetensors"
    save_hypernet(_model(), path)
    config = json.loads(json.dumps(_config().to_dict()))
    config["global_encoder"]["dim"] = 99
    broken = tmp_path / "broken.safetensors"
    save_safetensors_atomic(load_file(str(path)), broken, {"format": "lora-hypernet", "format_version": "1",
                                                           "config": json.dumps(config)})
    with pytest.raises(HypernetError, match="broken.safetensors: .*gives 99 values"):
        load_hypernet(broken)


# --- sampling inputs -----------------------------------------------------------------------------

def test_sampling_says_which_input_the_checkpoint_needs():
    both, glob_only, face_only = _model("face+global"), _model("global"), _model("face")
    face, glob = _unit_rows(2, 32, 0), _unit_rows(2, 24, 1)
    cases = [(both, face, None, "needs a face embedding and global image features .*test-clip.*no global"),
             (both, None, glob, "needs a face embedding and global image features; no face embedding"),
             (both, face, glob[:1], "2 face embeddings but 1 rows of global features"),
             (both, face, _unit_rows(2, 16, 2), "must have 24 values each .*'test-clip'"),
             (glob_only, face, glob, "needs global image features only; a face embedding was given"),
             (glob_only, None, None, "needs global image features"),
             (face_only, face, glob, "needs a face embedding only; global image features were given"),
             (face_only, None, None, "needs a face embedding; no face embedding was given")]
    for model, f, g, message in cases:
        with pytest.raises(HypernetError, match=message):
            sample_latents(model, f, global_features=g, seed=0, steps=2)
    assert sample_latents(glob_only, None, global_features=glob[0], seed=0, steps=2).shape == (1, 12)


def test_checkpoint_of_the_first_fusion_is_refused_with_what_to_do(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = tmp_path / "model.safetensors"
    save_hypernet(_model(), path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    for expert in ("face", "global", "joint"):  # the first fusion's experts had biases
        tensors[f"prior.fusion.{expert}_expert.bias"] = torch.zeros(32)
    old = tmp_path / "old_fusion.safetensors"
    save_safetensors_atomic(tensors, old, metadata)
    with pytest.raises(HypernetError, match="old_fusion.safetensors was trained with the first face\\+global fusion.*"
                                            "train it again with --condition face\\+global"):
        load_hypernet(old)
