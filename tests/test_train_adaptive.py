"""Adaptive training (train --config auto, issue 19): the choices are recorded in the checkpoint
and reload, early stopping stops on a validation plateau, the validation split chooses between
the prior, ridge regression and a kernel mean (a collection only neighbours predict gets the
kernel, one only ridge predicts gets ridge, with a clear statement), and what was chosen is
what sampling gives."""
import dataclasses
import json

import pytest
import torch
from hypernet_support import make_dataset, quick_config
from test_ridge_baseline import EMBEDDING_DIM, LAYOUT, linear_collection

from hypernet.cli import main
from hypernet.data.dataset import DatasetRecord, open_dataset, write_dataset
from hypernet.errors import HypernetError
from hypernet.model.checkpoint import load_hypernet, read_header, save_hypernet
from hypernet.model.hypernet import HypernetConfig
from hypernet.model.point_samplers import SamplerConfig, kernel_mean
from hypernet.pipeline import auto_config
from hypernet.pipeline.auto_config import (SIGNIFICANCE, auto_train_config, beats_baseline, paired_evidence,
                                           race_winner)
from hypernet.pipeline.sampling import sample_latents
from hypernet.pipeline.train_config import TrainConfig
from hypernet.pipeline.training import state_path, train


def small_auto(data, **overrides):
    """The automatic config of `data` with the tiny preset's networks (its MLP VAE, whose latents get
    the per-dimension normaliser), few steps and one learning rate, so it trains in seconds."""
    cfg, choices = auto_train_config(open_dataset(data))
    tiny = quick_config()
    values = dict(autoencoder=tiny.autoencoder, latent_normalizer="dim", prior=tiny.prior, ae_steps=30, prior_steps=60,
                  validation_every=10, patience=3, warmup_steps=2, checkpoint_every=10, prior_lr_search=())
    return dataclasses.replace(cfg, **{**values, **overrides}), choices


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("adaptive_data"), identities=40)


def test_auto_config_follows_the_collection(data):
    cfg, choices = auto_train_config(open_dataset(data))
    assert cfg.offset == "ridge" and cfg.validation_every > 0 and cfg.choose_sampling
    assert cfg.prior_lr_search == auto_config.PRIOR_LRS and cfg.prior_lr_search[0] == cfg.prior_lr == 1e-3
    # about 7 of the 27 fit LoRAs' directions stand above their noise: the floor of 8 keeps them all
    assert cfg.autoencoder.kind == "linear" and cfg.autoencoder.latent_dim == 8
    assert cfg.latent_normalizer == "global"
    assert "27 to fit and 3 to validate on" in choices[0] and choices[1].startswith("autoencoder linear")


@pytest.fixture(scope="module")
def linear_data(tmp_path_factory):
    """Delta W exactly linear in a 16-d face, 60 identities."""
    vectors, emb = linear_collection(60, seed=7)
    records = [DatasetRecord.in_memory(f"id-{i:03d}", v, e) for i, (v, e) in enumerate(zip(vectors, emb))]
    return write_dataset(tmp_path_factory.mktemp("linear") / "data", LAYOUT, "linear-test", records,
                         heldout_fraction=0.1)


def test_auto_latent_stops_where_more_directions_stop_reconstructing(linear_data, monkeypatch):
    """The noiseless linear collection fills about 16 directions (the face's): the latent keeps the
    16 that reconstruct as well as all above the noise, not the 48 identities to fit."""
    cfg, choices = auto_train_config(open_dataset(linear_data))
    assert cfg.autoencoder.latent_dim == EMBEDDING_DIM
    signal = int(choices[1].split("latent 16: ")[1].split(" directions")[0])
    assert EMBEDDING_DIM <= signal <= EMBEDDING_DIM + 4 < 48
    assert "the leading 16 reconstruct the validation LoRAs" in choices[1]
    monkeypatch.setattr(auto_config, "RECONSTRUCTION_TOLERANCE", 1.0)  # nothing short of all of them will do
    assert auto_train_config(open_dataset(linear_data))[0].autoencoder.latent_dim == signal
    monkeypatch.setattr(auto_config, "LATENT_RANGE", (8, 8))
    assert auto_train_config(open_dataset(linear_data))[0].autoencoder.latent_dim == 8


def test_auto_keeps_the_chunks_autoencoder_where_a_decomposition_would_not_fit(data, monkeypatch):
    monkeypatch.setattr(auto_config, "LINEAR_LIMIT", 10)
    cfg, choices = auto_train_config(open_dataset(data))
    assert cfg.autoencoder.kind == "chunks" and cfg.ae_steps == 300 and "300 steps" in choices[1]


def test_the_linear_autoencoder_auto_chooses_trains_without_steps_and_reloads(data, tmp_path):
    cfg, choices = auto_train_config(open_dataset(data))
    cfg = dataclasses.replace(cfg, prior=quick_config().prior, prior_steps=10, validation_every=5, patience=2,
                              warmup_steps=2, checkpoint_every=10, choose_sampling=False)
    out = tmp_path / "linear.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    model = load_hypernet(out)
    assert model.config.autoencoder.kind == "linear" and model.latent_size == 8
    metadata = read_header(out)[0]
    assert "autoencoder_mse" not in json.loads(metadata["losses"])  # closed form: no gradient steps
    assert json.loads(metadata["train_config"])["latent_normalizer"] == "global"
    # one scale for every principal coordinate: their variances keep falling as the directions' do
    std = model.norm.latent_std
    assert torch.all(std == std[0])
    latents = model.encode_vectors(open_dataset(data).load("train")[0])
    spread = latents.std(0)
    assert spread[0] > 1.2 * spread[7]


def test_the_latent_normaliser_is_checked_and_written_only_when_not_the_default():
    assert "latent_normalizer" not in TrainConfig().to_dict()  # files trained before it stay byte for byte
    chosen = dataclasses.replace(TrainConfig(), latent_normalizer="global")
    assert TrainConfig.from_dict(chosen.to_dict()) == chosen
    with pytest.raises(HypernetError, match="latent_normalizer must be 'dim' or 'global'"):
        TrainConfig(latent_normalizer="pca")


def test_the_automatic_choices_are_recorded_in_the_checkpoint_and_reload(data, tmp_path):
    cfg, choices = small_auto(data)
    out = tmp_path / "auto.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    metadata = read_header(out)[0]
    auto, config = json.loads(metadata["auto"]), json.loads(metadata["config"])
    assert auto["choices"] == choices
    # the prior's guidance: 3 unless another beat it on validation (never with fewer identities
    # retrieved), in the checkpoint where the prior answers (else the default: point samplers ignore it)
    searched = auto["guidance_search"]
    assert set(searched) == {f"{g:g}" for g in auto_config.GUIDANCES}
    assert auto["guidance"] in auto_config.GUIDANCES and searched[f"{auto['guidance']:g}"]["top1"] >= searched["3"]["top1"]
    if not auto["sampler"].startswith("prior"):
        assert auto["guidance"] == 3.0
    assert config.get("guidance", 3.0) == auto["guidance"]
    assert isinstance(auto["beats_ridge"], bool) and "ridge" in auto["statement"]
    # every candidate was scored on the validation identities, and the best of them was kept
    scores = auto["validation"]
    assert {"prior, temperature 1", "prior, temperature 0", "ridge", "kernel, k 1, tau 0.01",
            "kernel, k 16, tau 1", "ridge-lora"} <= set(scores)
    # the best of the candidates that beat ridge face -> LoRA on validation, or that ridge map itself
    assert set(auto["significant"]) <= set(auto["evidence"]) == set(scores) - {"ridge-lora"}
    # each prior candidate's evidence against its own ridge offset travels with the record
    assert set(auto["versus_offset"]) == {name for name in scores if name.startswith("prior")}
    assert all(auto["evidence"][name]["z_top1"] >= SIGNIFICANCE or auto["evidence"][name]["t_rel_err"] >= SIGNIFICANCE
               for name in auto["significant"])
    assert auto["sampler"] == max(auto["significant"], key=lambda k: (scores[k]["top1"], -scores[k]["rel_err"]),
                                  default="ridge-lora")
    kind = auto["sampler"].split(",")[0]
    assert config.get("sampler", {"kind": "prior"})["kind"] == kind
    assert config["offset"] == "ridge" and config.get("temperature", 1.0) == auto["temperature"]
    assert TrainConfig.from_dict(json.loads(metadata["train_config"])) == cfg
    model = load_hypernet(out)
    assert model.config.sampler.kind == kind and model.config.temperature == auto["temperature"]
    assert model.norm.offset_weight.abs().sum() > 0  # the ridge map face -> latent travelled with the weights
    face = open_dataset(data).load("heldout")[1][:2]
    model.use_sampler(SamplerConfig())  # the trained prior, whatever was chosen
    first, again = (sample_latents(model, face, seed=5, steps=4) for _ in range(2))
    assert torch.equal(first, again)
    # the latent offset is part of the sample: without it the sample differs by exactly the offset
    offset = model.latent_offset(model.condition_vectors(torch.nn.functional.normalize(face, dim=1), None))
    model.config = dataclasses.replace(model.config, offset="none")
    assert torch.allclose(sample_latents(model, face, seed=5, steps=4) + offset, first, atol=1e-5)


def test_a_chosen_guidance_travels_with_the_checkpoint_and_callers_without_one_sample_with_it(data, tmp_path):
    from hypernet.pipeline.evaluate import evaluate
    cfg, choices = small_auto(data, prior_steps=10, choose_sampling=False)
    out = tmp_path / "guided.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    model = load_hypernet(out)
    assert model.config.guidance == 3.0 and "guidance" not in model.config.to_dict()  # older files unchanged
    model.config = dataclasses.replace(model.config, guidance=5.0)
    assert HypernetConfig.from_dict(json.loads(model.config.to_json())).guidance == 5.0
    assert "guidance: 5 (chosen in training" in model.describe()
    face = open_dataset(data).load("heldout")[1][:2]
    own = sample_latents(model, face, seed=1, steps=4)
    assert torch.equal(own, sample_latents(model, face, seed=1, steps=4, guidance=5.0))
    assert not torch.allclose(own, sample_latents(model, face, seed=1, steps=4, guidance=3.0))
    assert evaluate(model, open_dataset(data), seeds=1, steps=2, progress=False)["settings"]["guidance"] == 5.0
    for bad in (-1.0, 10.5, True, "3"):
        with pytest.raises(HypernetError, match="guidance must be a number between 0 and 10"):
            dataclasses.replace(model.config, guidance=bad)


def test_another_guidance_replaces_the_default_only_when_it_beats_it_on_validation(monkeypatch):
    """The guidance search's rule is the race's: a guidance ahead of 3 by one identity of many is
    not enough, one retrieving far more is taken."""
    hits = {1.0: 10, 2.0: 11, 3.0: 10, 5.0: 12}  # of 40 validation rows

    def scored(far_ahead):
        def compare_rows(pred, true, layout):
            g = float(pred[0, 0])
            n = hits[g] + (20 if far_ahead and g == 5.0 else 0)
            hit = torch.arange(40) < n
            return {"top1": n / 40, "rel_err": 0.5}, {"hit": hit, "rel_err": torch.full((40,), 0.5)}
        return compare_rows

    class Model:
        config = HypernetConfig(layout=LAYOUT, embedding_model="test", embedding_dim=EMBEDDING_DIM)
        layout = LAYOUT

        def decode_latents(self, latents):
            return latents

    monkeypatch.setattr(auto_config, "sample_latents", lambda model, cond, guidance, **_: torch.full((40, 1), guidance))
    for far_ahead, expected in ((False, 3.0), (True, 5.0)):
        monkeypatch.setattr(auto_config, "compare_rows", scored(far_ahead))
        chosen, scores, _ = auto_config._choose_guidance(Model(), None, None)
        assert chosen == expected and set(scores) == {"1", "2", "3", "5"}


def twin_collection(people: int, copies: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each person's LoRA under `copies` identities with (nearly) the same face, the face drawn
    independently of the LoRA: no linear map predicts it, the nearest training face does."""
    vectors, _ = linear_collection(people, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    faces = torch.randn(people, EMBEDDING_DIM, generator=gen)
    faces = faces.repeat_interleave(copies, 0) + 0.01 * torch.randn(people * copies, EMBEDDING_DIM, generator=gen)
    return vectors.repeat_interleave(copies, 0), torch.nn.functional.normalize(faces, dim=1)


def write_collection(folder, vectors, emb, heldout=0.1):
    records = [DatasetRecord.in_memory(f"id-{i:03d}", v, e) for i, (v, e) in enumerate(zip(vectors, emb))]
    return write_dataset(folder, LAYOUT, "test-faces", records, heldout_fraction=heldout)


def test_a_collection_of_neighbours_gets_the_kernel_sampler_from_all_training_identities(tmp_path, capsys):
    data = write_collection(tmp_path / "data", *twin_collection(30))
    cfg, choices = small_auto(data, prior_steps=20, ae_steps=150)  # an autoencoder that keeps the identities
    out = tmp_path / "twins.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    auto = json.loads(read_header(out)[0]["auto"])
    assert auto["sampler"].startswith("kernel") and auto["beats_ridge"]
    assert auto["validation"][auto["sampler"]]["top1"] > auto["ridge"]["top1"]
    assert auto["statement"].startswith("the hypernet (kernel")
    model = load_hypernet(out)
    train_count = len(open_dataset(data).ids("train"))
    # refitted on every training identity (fit and validation), not only the fit rows
    assert model.config.sampler.rows == train_count and model.norm.kernel_keys.shape[0] == train_count
    face = open_dataset(data).load("heldout")[1]
    # a point sampler answers without noise: every seed and guidance gives the same latents
    latents = sample_latents(model, face, seed=0, steps=3)
    assert torch.equal(latents, sample_latents(model, face, seed=7, steps=5, guidance=1.0))
    expected = kernel_mean(model.condition_vectors(torch.nn.functional.normalize(face, dim=1), None),
                           model.norm.kernel_keys, model.norm.kernel_latents, model.config.sampler.k,
                           model.config.sampler.tau)
    assert torch.allclose(latents, expected)
    assert main(["evaluate", "--ckpt", str(out), "--data", str(data), "--json", "--seeds", "2", "--steps", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sampled"]["top1"] >= result["baselines"]["ridge"]["top1"]
    assert result["sampled"]["top1"] > 0.5 and result["sampled"]["diversity"] == 0


def test_kernel_mean_is_the_nearest_row_at_k_1_and_the_plain_mean_at_a_high_tau():
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    values = torch.tensor([[1.0], [2.0], [4.0]])
    cond = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.equal(kernel_mean(cond, keys, values, 1, 0.01), torch.tensor([[4.0], [1.0]]))
    assert torch.allclose(kernel_mean(cond, keys, values, 2, 100.0), torch.tensor([[3.0], [1.5]]), atol=0.01)
    assert torch.allclose(kernel_mean(cond, keys, values, 3, 100.0), torch.full((2, 1), 7 / 3), atol=0.01)


def test_sampler_configs_are_checked_and_written_only_when_not_the_prior():
    with pytest.raises(HypernetError, match="sampler must be one of"):
        SamplerConfig("nearest")
    with pytest.raises(HypernetError, match="k 9 is more than its 4 stored"):
        SamplerConfig("kernel", k=9, tau=0.1, rows=4)
    with pytest.raises(HypernetError, match="tau must be a number"):
        SamplerConfig("kernel", k=1, tau=0.0, rows=4)
    with pytest.raises(HypernetError, match="takes no k"):
        SamplerConfig("ridge", k=3)
    with pytest.raises(HypernetError, match="needs offset 'ridge'"):
        HypernetConfig(layout=LAYOUT, embedding_model="x", embedding_dim=EMBEDDING_DIM, sampler=SamplerConfig("ridge"))
    plain = HypernetConfig(layout=LAYOUT, embedding_model="x", embedding_dim=EMBEDDING_DIM)
    assert "sampler" not in plain.to_dict()  # older readers see the config they always saw
    kernel = dataclasses.replace(plain, sampler=SamplerConfig("kernel", k=2, tau=0.1, rows=5))
    assert HypernetConfig.from_dict(json.loads(kernel.to_json())) == kernel


def test_a_kernel_checkpoint_reloads_and_an_edited_row_count_is_refused_with_one_line(data, tmp_path):
    cfg, _ = small_auto(data, prior_steps=10, choose_sampling=False)
    train(data, tmp_path / "plain.safetensors", cfg, progress=False)
    model = load_hypernet(tmp_path / "plain.safetensors")
    gen = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(5, model.config.embedding_dim, generator=gen), dim=1)
    model.use_sampler(SamplerConfig("kernel", k=2, tau=0.1, rows=5), kernel_keys=keys,
                      kernel_latents=torch.randn(5, model.latent_size, generator=gen))
    save_hypernet(model, tmp_path / "kernel.safetensors", {})
    loaded = load_hypernet(tmp_path / "kernel.safetensors")
    assert loaded.config.sampler == model.config.sampler and torch.equal(loaded.norm.kernel_keys, keys)
    assert torch.equal(sample_latents(loaded, keys[:2], seed=0, steps=2), sample_latents(model, keys[:2], seed=1,
                                                                                          steps=2))
    model.config = dataclasses.replace(model.config, sampler=SamplerConfig("kernel", k=2, tau=0.1, rows=4))
    save_hypernet(model, tmp_path / "edited.safetensors", {})
    with pytest.raises(HypernetError, match="kernel_keys has shape") as info:
        load_hypernet(tmp_path / "edited.safetensors")
    assert "\n" not in str(info.value)


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


def test_a_collection_ridge_predicts_exactly_gets_the_statement(linear_data, tmp_path, capsys):
    data = linear_data
    cfg, choices = small_auto(data, prior_steps=20)
    out = tmp_path / "linear.safetensors"
    train(data, out, cfg, progress=False, choices=choices)
    auto = json.loads(read_header(out)[0]["auto"])
    assert auto["ridge"]["top1"] == 1.0 and not auto["beats_ridge"]
    assert auto["statement"].startswith("could not beat the ridge baseline on the validation identities")
    # ridge to the LoRA is exact here, the autoencoder (30 steps) is not: the checkpoint samples the
    # regression itself, so it retrieves the held-out identities as evaluate's ridge baseline does
    assert auto["sampler"] == "ridge-lora" and "the checkpoint samples ridge regression face -> LoRA" in auto["statement"]
    assert main(["evaluate", "--ckpt", str(out), "--data", str(data), "--json", "--seeds", "1", "--steps", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baselines"]["ridge"]["top1"] == 1.0 and result["sampled"]["top1"] == 1.0
    assert result["sampled"]["rel_err"] < 0.05 < result["recon"]["rel_err"]  # it bypassed the autoencoder
    model = load_hypernet(out)
    assert model.config.sampler.kind == "ridge-lora" and model.sample_size == model.config.sampler.rank


def test_validation_needs_the_face_condition_and_choose_sampling_a_split():
    with pytest.raises(HypernetError, match="condition 'face' only"):
        TrainConfig(validation_every=10, condition="global")
    with pytest.raises(HypernetError, match="choose_sampling needs a validation split"):
        TrainConfig(choose_sampling=True)


def rows(hits, errors):
    return {"hit": torch.tensor(hits, dtype=torch.bool), "rel_err": torch.tensor(errors, dtype=torch.float64)}


def test_a_candidate_replaces_the_baseline_only_significantly_ahead():
    base = rows([1, 0, 0, 0, 0, 0, 0, 0, 0], [0.5] * 9)
    # four identities more where they disagree on four: 4 / sqrt(4) = 2 standard errors
    assert beats_baseline(rows([1, 1, 1, 1, 1, 0, 0, 0, 0], [0.5] * 9), base)
    # two more where they disagree on two (2 / sqrt(2) = 1.4): the best of many candidates gets that by chance
    # (the grid's manifold-2 cell)
    assert not beats_baseline(rows([1, 1, 1, 0, 0, 0, 0, 0, 0], [0.5] * 9), base)
    assert paired_evidence(rows([1, 1, 1, 0, 0, 0, 0, 0, 0], [0.5] * 9), base)["z_top1"] == pytest.approx(2 ** 0.5)
    # six against one where they disagree (5 / sqrt(7) = 1.89, past the one-sided 5 % point): the
    # issue-19-small cell's prior, which held out retrieved many times what ridge did
    ahead, ridge = rows([1] * 7 + [0] * 6, [0.5] * 13), rows([1] + [0] * 6 + [1] + [0] * 5, [0.5] * 13)
    assert paired_evidence(ahead, ridge)["z_top1"] == pytest.approx(5 / 7 ** 0.5)
    assert beats_baseline(ahead, ridge)
    # as many retrieved and a consistently smaller delta-W error: a win
    assert beats_baseline(rows([1, 0, 0, 0, 0, 0, 0, 0, 0], [0.4, 0.45, 0.42, 0.41, 0.44, 0.43, 0.4, 0.46, 0.45]), base)
    # as many retrieved and an error smaller on average only through one row: within its SE
    assert not beats_baseline(rows([1, 0, 0, 0, 0, 0, 0, 0, 0], [0.55] * 8 + [0.0]), base)
    # fewer retrieved never wins, whatever the error
    assert not beats_baseline(rows([0] * 9, [0.0] * 9), base)


def test_a_prior_wins_over_its_own_ridge_offset_only_significantly_ahead_of_it():
    """The grid's linear cell: the prior's residual learnt nothing, so it ties its ridge offset
    (both far ahead of ridge face -> LoRA) and won the ranking by 1e-5 of delta-W error."""
    def race(prior, offset, baseline=rows([1] * 3 + [0] * 9, [0.6] * 12)):
        candidates = {"prior, temperature 0": prior, "ridge": offset, "ridge-lora": baseline}
        scores = {name: {"top1": float(r["hit"].double().mean()), "rel_err": float(r["rel_err"].mean())}
                  for name, r in candidates.items()}
        choices = {"prior, temperature 0": ("prior", 0.0), "ridge": ("ridge",), "ridge-lora": ("ridge-lora",)}
        return race_winner(scores, candidates, choices)

    offset = rows([1] * 9 + [0] * 3, [0.40, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.48, 0.49, 0.50, 0.51])
    wobble = torch.tensor([0.01, -0.01] * 6, dtype=torch.float64)  # row by row no better, on average by 1e-5
    tied = rows(offset["hit"].tolist(), (offset["rel_err"] + wobble - 1e-5).tolist())
    best, evidence, versus_offset, significant = race(tied, offset)
    assert evidence["prior, temperature 0"]["gain"] == 6 and versus_offset["prior, temperature 0"]["gain"] == 0
    assert best == "ridge" and significant == ["ridge"]
    assert float(tied["rel_err"].mean()) < float(offset["rel_err"].mean())  # the ranking alone picked the prior
    # three more identities where they disagree on three (1.73 standard errors): the residual earned it
    ahead = rows([1] * 12, (offset["rel_err"] + 0.05).tolist())
    assert race(ahead, offset)[0] == "prior, temperature 0"
    # an offset that does not beat the baseline leaves the prior to the baseline's test alone
    weak = rows([1] * 3 + [0] * 9, [0.6] * 12)
    best, _, versus_offset, significant = race(tied, weak)
    assert best == "prior, temperature 0" and significant == ["prior, temperature 0"]
    assert versus_offset["prior, temperature 0"]["gain"] == 6


def test_train_without_a_config_is_auto_and_other_conditions_get_preset_default(data, tmp_path, monkeypatch, capsys):
    from hypernet.cli import train as train_cli
    monkeypatch.setattr(train_cli, "auto_train_config",
                        lambda dataset, seed, condition: small_auto(data, prior_lr_search=(1e-12, 1e-3)))
    out = tmp_path / "plain.safetensors"
    assert main(["train", "--data", str(data), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "auto" in read_header(out)[0] and "auto: samples with" in printed
    assert "prior learning rate 0.001, the lowest validation loss of 1e-12: " in printed

    class Chosen(Exception):
        pass

    def preset(spec):
        raise Chosen(spec)
    monkeypatch.setattr(train_cli, "load_train_config", preset)
    with pytest.raises(Chosen, match="^default$"):
        main(["train", "--data", str(data), "--out", str(tmp_path / "global.safetensors"), "--condition", "global"])
    assert "--condition global trains with preset default" in capsys.readouterr().out


def test_train_without_a_config_names_a_lora_with_nan_values(tmp_path, capsys):
    """auto's latent choice reads the training LoRAs before the trainer does; a NaN there still
    gets the trainer's message naming the identity, not a failed decomposition."""
    vectors, emb = linear_collection(30, seed=7)
    vectors[:5, 3] = float("nan")  # some of these land in the training split
    records = [DatasetRecord.in_memory(f"id-{i:03d}", v, e) for i, (v, e) in enumerate(zip(vectors, emb))]
    data = write_dataset(tmp_path / "data", LAYOUT, "linear-test", records, heldout_fraction=0.1)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "nan.safetensors"), "--quiet"]) == 1
    assert "contains NaN or infinite values; rebuild the dataset without it" in capsys.readouterr().err
    assert not (tmp_path / "nan.safetensors").exists()


def test_the_learning_rate_search_keeps_the_run_with_the_lowest_validation_loss(data, tmp_path):
    # 1e-12 leaves the prior where it started, 1e-3 learns (and early-stops at step 60 of 200, its
    # best at 45, so the budget leaves room for a second run): whichever order they run in, the
    # kept prior is 1e-3's run, exactly what prior_lr 1e-3 alone trains
    single = tmp_path / "single.safetensors"
    cfg, _ = small_auto(data, choose_sampling=False, prior_steps=200, validation_every=5, prior_lr=1e-3)
    train(data, single, cfg, progress=False)
    expected = load_hypernet(single).state_dict()
    for order in ((1e-12, 1e-3), (1e-3, 1e-12)):
        out = tmp_path / f"search-{order[0]:g}.safetensors"
        train(data, out, dataclasses.replace(cfg, prior_lr=5e-4, prior_lr_search=order), progress=False)
        early = json.loads(read_header(out)[0]["validation"])
        runs = {t["lr"]: t for t in early["lr_search"]}
        assert early["prior_lr"] == 1e-3 and list(runs) == list(order)
        assert runs[1e-3]["best_loss"] < runs[1e-12]["best_loss"] and early["best_loss"] == runs[1e-3]["best_loss"]
        got = load_hypernet(out).state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_learning_rate_search_resumes_to_the_same_result(data, tmp_path):
    cfg, _ = small_auto(data, choose_sampling=False, prior_steps=200, validation_every=5, prior_lr_search=(1e-3, 3e-3))
    whole = tmp_path / "whole.safetensors"
    train(data, whole, cfg, progress=False)
    parted = tmp_path / "parted.safetensors"

    class Stop(Exception):
        pass

    seen = []

    def stop_in_the_second_run(phase, step):
        seen.append((phase, step))
        if phase == "prior" and step == 20 and seen.count(("prior", 20)) == 2:
            raise Stop

    with pytest.raises(Stop):
        train(data, parted, cfg, progress=False, on_step=stop_in_the_second_run)
    train(data, parted, cfg, progress=False, resume=True)
    a, b = load_hypernet(whole).state_dict(), load_hypernet(parted).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_header(whole)[0]["validation"] == read_header(parted)[0]["validation"]


def test_a_diverging_learning_rate_is_passed_over_and_all_diverging_is_one_clear_error(data, tmp_path):
    cfg, _ = small_auto(data, choose_sampling=False, prior_steps=20, validation_every=5, prior_lr_search=(1e30, 1e-3))
    out = tmp_path / "search.safetensors"
    train(data, out, cfg, progress=False)
    early = json.loads(read_header(out)[0]["validation"])
    assert early["prior_lr"] == 1e-3 and early["lr_search"][0]["diverged"]
    with pytest.raises(HypernetError, match="diverged at every learning rate"):
        train(data, tmp_path / "none.safetensors", dataclasses.replace(cfg, prior_lr_search=(1e30,)), progress=False)
    assert not (tmp_path / "none.safetensors").exists()


def test_the_learning_rate_search_is_checked_and_written_only_when_asked_for():
    assert "prior_lr_search" not in TrainConfig().to_dict()
    cfg = TrainConfig(validation_every=10, prior_lr_search=(1e-3, 3e-4))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(prior_lr_search=(1e-3,)), dict(validation_every=10, prior_lr_search=(0.0,)),
                dict(validation_every=10, prior_steps=5, prior_lr_search=(1e-3,))):
        with pytest.raises(HypernetError, match="prior_lr_search"):
            TrainConfig(**bad)


def test_the_learning_rate_search_starts_no_run_once_the_runs_before_took_every_step(data, tmp_path):
    # a patience longer than the run: the first rate's run takes all 20 steps, so 3e-3 is not run
    cfg, _ = small_auto(data, choose_sampling=False, prior_steps=20, validation_every=5, patience=10,
                        prior_lr_search=(1e-3, 3e-3))
    out = tmp_path / "budget.safetensors"
    train(data, out, cfg, progress=False)
    early = json.loads(read_header(out)[0]["validation"])
    first, second = early["lr_search"]
    assert early["prior_lr"] == 1e-3 and first["steps"] == 20 and second == {"lr": 3e-3, "best_loss": None,
                                                                            "skipped": True, "steps": 0}


def test_the_learning_rate_search_shares_one_step_budget_between_its_runs(data, tmp_path):
    # 1e-12 leaves the prior flat: its best validation loss is at step 5 and it stops at step 20
    # (patience 3). Of 40 steps the second run gets the 20 left and takes them all (1e-3 still
    # improves at step 20); of 22 the 2 left are fewer than the 5 the best run needed, so none.
    cfg, _ = small_auto(data, choose_sampling=False, prior_steps=40, validation_every=5, patience=3,
                        prior_lr_search=(1e-12, 1e-3))
    out = tmp_path / "shared.safetensors"
    train(data, out, cfg, progress=False)
    early = json.loads(read_header(out)[0]["validation"])
    first, second = early["lr_search"]
    assert (first["best_step"], first["steps"]) == (5, 20) and second["steps"] == 20 and early["prior_lr"] == 1e-3
    short = tmp_path / "short.safetensors"
    train(data, short, dataclasses.replace(cfg, prior_steps=22), progress=False)
    early = json.loads(read_header(short)[0]["validation"])
    assert early["lr_search"][1] == {"lr": 1e-3, "best_loss": None, "skipped": True, "steps": 0}
    assert early["prior_lr"] == 1e-12
