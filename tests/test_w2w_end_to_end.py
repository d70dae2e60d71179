"""weights2weights-format files of a few hundred identities -> import-w2w -> dataset -> train ->
evaluate, then the sampled LoRA on a tiny SD1.5 MODEL through the nodes: Load Hypernet ->
Sample LoRA -> Decode LoRA -> Apply LoRA -> KSampler.

The layout is tiny-sd15-w2w: weights2weights' 64 modules and PEFT keys on the tiny SD1.5 test
UNet (10,272 values a row), so the whole path runs in seconds on one CPU thread.
"""
from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from face_models import write_face_models
from hypernet.cli import main
from hypernet.data.dataset import open_dataset
from hypernet.lora.presets import preset
from w2w_support import write_w2w_source

IDENTITIES = 200
LAYOUT_NAME = "tiny-sd15-w2w"
LAYOUT = preset(LAYOUT_NAME)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The trained hypernet and the dataset it came from, made through the CLI as a user would."""
    root = tmp_path_factory.mktemp("w2w_e2e")
    files, images = write_w2w_source(root, LAYOUT_NAME, IDENTITIES)
    collection, data = root / "collection", root / "data"
    assert main(["import-w2w", "--weights", str(files), "--images", str(images), "--out", str(collection),
                 "--layout", LAYOUT_NAME, "--quiet"]) == 0
    models = write_face_models(root / "insightface" / "buffalo_l")
    assert main(["dataset", "--src", str(collection), "--out", str(data), "--layout", LAYOUT_NAME,
                 "--heldout", "0.1", "--face-model", str(models["folder"])]) == 0
    config = root / "config.json"
    config.write_text(json.dumps({"preset": "tiny", "ae_steps": 20, "prior_steps": 20, "checkpoint_every": 10,
                                  "warmup_steps": 2}))
    hypernets = root / "lora_hypernets"
    hypernets.mkdir()
    assert main(["train", "--data", str(data), "--out", str(hypernets / "w2w.safetensors"), "--config",
                 str(config), "--quiet", "--device", "cpu"]) == 0
    return hypernets, data


def test_imported_rows_train_and_evaluate(checkpoint, capsys):
    hypernets, data = checkpoint
    dataset = open_dataset(data)
    vectors, embeddings, ids = dataset.load("train")
    heldout = dataset.load("heldout")[2]
    assert len(ids) + len(heldout) == IDENTITIES and len(heldout) >= 20
    assert vectors.shape[1] == LAYOUT.num_values and dataset.layout == LAYOUT and dataset.layout.base_model == "sd15"
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", str(hypernets / "w2w.safetensors"), "--data", str(data), "--seeds", "1",
                 "--steps", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"]["heldout"] == len(heldout)
    for measure in ("sampled", "ceiling"):
        assert 0.0 <= result[measure]["top1"] <= 1.0 and math.isfinite(result[measure]["cosine"])
    assert math.isfinite(result["recon"]["rel_err"])


def test_sampled_lora_drives_the_tiny_sd15_model_in_comfyui(checkpoint, comfy, pack, tiny_sd15, monkeypatch):
    import folder_paths
    import nodes as comfy_nodes

    hypernets, data = checkpoint
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lora_hypernets", ([str(hypernets)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    hypernet_nodes = importlib.import_module(f"{pack.__name__}.nodes.hypernet_nodes")
    lora_nodes = importlib.import_module(f"{pack.__name__}.nodes.lora_nodes")
    values = importlib.import_module(f"{pack.__name__}.nodes.values")

    hypernet, _ = hypernet_nodes.LoadHypernet.execute("w2w.safetensors")
    _, embeddings, _ = open_dataset(data).load("heldout")
    face = values.FaceEmbeddingValue(embeddings[0], embeddings[:1], hypernet.hypernet.embedding_model, (0,))
    (latent,) = hypernet_nodes.SampleLoRA.execute(hypernet, face, 7, 4, 1.5, 0.0)
    (lora,) = hypernet_nodes.DecodeLoRA.execute(hypernet, latent)
    # The pack imports its own copy of the library (as ComfyUI does): compare layouts by fingerprint.
    assert lora.layout.fingerprint == LAYOUT.fingerprint and len(lora.state_dict) == 3 * len(LAYOUT)
    patched, _ = lora_nodes.ApplyLoRA.execute(tiny_sd15, lora, 1.0)
    assert len(patched.patches) == len(LAYOUT)

    def draw(model):
        context = torch.randn(1, 77, 96, generator=torch.Generator().manual_seed(1))
        positive, negative = [[context, {}]], [[torch.zeros_like(context), {}]]
        latent_image = {"samples": torch.zeros(1, 4, 8, 8)}
        (out,) = comfy_nodes.KSampler().sample(model, 3, 3, 2.0, "euler", "normal", positive, negative, latent_image)
        return out["samples"]

    with_lora, without = draw(patched), draw(tiny_sd15)
    assert with_lora.shape == (1, 4, 8, 8) and torch.isfinite(with_lora).all()
    assert not torch.equal(with_lora, without), "the sampled LoRA must change what the model draws"
