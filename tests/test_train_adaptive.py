"""Adaptive training (train --config auto, issue 19): the choices are recorded in the checkpoint
and reload, early stopping stops on a validation plateau, and a collection the hypernet cannot
beat ridge regression on gets a clear statement."""
import dataclasses
import json

import pytest
import torch
from hypernet_support import make_dataset, quick_config
from test_ridge_baseline import LAYOUT, linear_collection

from hypernet.cli import main
from hypernet.data.dataset import DatasetRecord, open_dataset, write_dataset
from hypernet.errors import HypernetError
from hypernet.model.checkpoint import load_hypernet, read_header
from hypernet.pipeline.auto_config import auto_train_config
from hypernet.pipeline.sampling import sample_latents
from hypernet.pipeline.train_config import TrainConfig
from hypernet.pipeline.training import state_path, train


def small_auto(data, **overrides):
    """The automatic config of `data` with the tiny preset's networks and few steps, so it trains in seconds."""
    cfg, choices = auto_train_config(open_dataset(data))
    tiny = quick_config()
    values = dict(autoencoder=tiny.autoencoder, prior=tiny.prior, ae_steps=30, prior_steps=60, validation_every=10,
                  patience=3, warmup_steps=2, checkpoint_every=10)
    return dataclasses.replace(cfg, **{**values, **overrides}), choices


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("adaptive_data"), identities=40)


def test_auto_config_follows_the_collection(data):
    cfg, choices = auto_train_config(open_dataset(data))
    assert cfg.offset == "ridge" and cfg.validation_every > 0 and cfg.choose_sampling
    assert cfg.autoencoder.latent_dim == 32 and cfg.ae_steps == 300  # the floors, for 27 identities to fit
    assert "27 to fit and 3 to validate on" in choices[0]


def test_the_automatic_choices_are_recorded_in_the_checkpoint_and_reload(data, tmp_path):
    cfg, choices = small_auto(data)
    out = tmp_path / "auto.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    metadata = read_header(out)[0]
    auto, config = json.loads(metadata["auto"]), json.loads(metadata["config"])
    assert auto["choices"] == choices and auto["temperature"] in (0.0, 0.5, 1.0) and auto["guidance"] == 3.0
    assert isinstance(auto["beats_ridge"], bool) and "ridge" in auto["statement"]
    assert config["offset"] == "ridge" and config.get("temperature", 1.0) == auto["temperature"]
    assert TrainConfig.from_dict(json.loads(metadata["train_config"])) == cfg
    model = load_hypernet(out)
    assert model.config.offset == "ridge" and model.config.temperature == auto["temperature"]
    assert model.norm.offset_weight.abs().sum() > 0  # the ridge map face -> latent travelled with the weights
    face = open_dataset(data).load("heldout")[1][:2]
    first, again = (sample_latents(model, face, seed=5, steps=4) for _ in range(2))
    assert torch.equal(first, again)
    # the latent offset is part of the sample: without it the sample differs by exactly the offset
    offset = model.latent_offset(model.condition_vectors(torch.nn.functional.normalize(face, dim=1), None))
    model.config = dataclasses.replace(model.config, offset="none")
    assert torch.allclose(sample_latents(model, face, seed=5, steps=4) + offset, first, atol=1e-5)


def test_early_stopping_stops_on_a_validation_plateau(data, tmp_path):
    # A learning rate of 1e-12 leaves the prior where it started: its validation loss is flat
    # from the first measurement, so `patience` measurements later training stops.
    cfg, _ = small_auto(data, prior_lr=1e-12, prior_steps=200, validation_every=5, patience=3, choose_sampling=False)
    out = tmp_path / "flat.safetensors"
    train(data, out, cfg, progress=False)
    early = json.loads(read_header(out)[0]["validation"])
    assert early["stopped"] and early["best_step"] == 5 and [row[0] for row in early["history"]] == [5, 10, 15, 20]
    assert json.loads(read_header(out)[0]["losses"])  # it trained, and stopped at step 20 of 200
    # a learning prior keeps improving over as many steps, so it does not stop
    cfg, _ = small_auto(data, prior_lr=1e-3, prior_steps=20, validation_every=5, patience=3, choose_sampling=False)
    train(data, tmp_path / "learning.safetensors", cfg, progress=False)
    early = json.loads(read_header(tmp_path / "learning.safetensors")[0]["validation"])
    assert not early["stopped"] and early["best_step"] == 20


def test_an_early_stopped_run_resumes_to_the_same_result(data, tmp_path):
    cfg, choices = small_auto(data, choose_sampling=False, prior_steps=40, validation_every=5)
    whole = tmp_path / "whole.safetensors"
    train(data, whole, cfg, progress=False)
    parted = tmp_path / "parted.safetensors"

    class Stop(Exception):
        pass

    def stop_at(phase, step):
        if phase == "prior" and step == 20:
            raise Stop

    with pytest.raises(Stop):
        train(data, parted, cfg, progress=False, on_step=stop_at)
    assert state_path(parted).exists()
    train(data, parted, cfg, progress=False, resume=True)
    a, b = load_hypernet(whole).state_dict(), load_hypernet(parted).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_header(whole)[0]["validation"] == read_header(parted)[0]["validation"]


def test_a_collection_ridge_predicts_exactly_gets_the_statement(tmp_path, capsys):
    vectors, emb = linear_collection(60, seed=7)
    records = [DatasetRecord.in_memory(f"id-{i:03d}", v, e) for i, (v, e) in enumerate(zip(vectors, emb))]
    data = write_dataset(tmp_path / "data", LAYOUT, "linear-test", records, heldout_fraction=0.1)
    cfg, choices = small_auto(data, prior_steps=20)
    out = tmp_path / "linear.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    auto = json.loads(read_header(out)[0]["auto"])
    assert auto["ridge"]["top1"] == 1.0 and not auto["beats_ridge"]
    assert auto["statement"].startswith("could not beat the ridge baseline on the validation identities")
    # evaluate reports ridge beside the sampled LoRAs of such a checkpoint
    assert main(["evaluate", "--ckpt", str(out), "--data", str(data), "--json", "--seeds", "1", "--steps", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baselines"]["ridge"]["top1"] == 1.0 and 0 <= result["sampled"]["top1"] <= 1


def test_validation_needs_the_face_condition_and_choose_sampling_a_split():
    with pytest.raises(HypernetError, match="condition 'face' only"):
        TrainConfig(validation_every=10, condition="global")
    with pytest.raises(HypernetError, match="choose_sampling needs a validation split"):
        TrainConfig(choose_sampling=True)
