"""Global image features end to end: synthetic collections with global vectors, datasets that
carry them, training, sampling and evaluation with the condition "face+global" (and "global")."""
import json

import pytest
import torch
from safetensors import safe_open

from hypernet.cli import main
from hypernet.model.checkpoint import load_hypernet
from hypernet.common.tensors import mean_embedding
from hypernet.data.dataset import DatasetRecord, open_dataset, write_dataset
from hypernet.data.builder import build_dataset
from hypernet.errors import HypernetError
from hypernet.pipeline.evaluate import evaluate
from hypernet.lora.lora_io import read_lora
from hypernet.pipeline.sampling import sample_latents
from hypernet.data.synth import GLOBAL_MODEL, SynthSpec, write_synth
from hypernet.pipeline.train_state import state_path
from hypernet.pipeline.training import train
from hypernet_support import SMALL_LAYOUT, make_dataset, quick_config

GLOBAL_DIM = 16
ENCODER = {"name": GLOBAL_MODEL, "dim": GLOBAL_DIM, "fingerprint": "synthetic"}


def make_global_dataset(folder, identities=24, depends="face+global"):
    write_synth(folder / "collection", SMALL_LAYOUT, identities, SynthSpec(seed=0), progress=False,
                global_dim=GLOBAL_DIM, depends=depends)
    build_dataset(folder / "collection", folder / "data", heldout=0.25, progress=False)
    return folder / "data"


@pytest.fixture(scope="module")
def global_data(tmp_path_factory):
    return make_global_dataset(tmp_path_factory.mktemp("global_data"))


@pytest.fixture(scope="module")
def fused(global_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused_ckpt") / "fused.safetensors"
    train(global_data, out, quick_config(condition="face+global"), progress=False)
    return out


# --- synthetic collections ---------------------------------------------------------------------

def _lora_delta(folder):
    return torch.cat([m.delta().reshape(-1) for m in read_lora(folder / "lora.safetensors").values()])


def test_synth_global_vectors_matter_only_when_the_loras_depend_on_them(tmp_path):
    plain = write_synth(tmp_path / "plain", SMALL_LAYOUT, 3, progress=False)
    ignored = write_synth(tmp_path / "ignored", SMALL_LAYOUT, 3, progress=False, global_dim=GLOBAL_DIM)
    both = write_synth(tmp_path / "both", SMALL_LAYOUT, 3, progress=False, global_dim=GLOBAL_DIM,
                       depends="face+global")
    with safe_open(str(ignored[0] / "global.safetensors"), framework="pt") as f:
        vector, meta = f.get_tensor("embedding"), f.metadata()
    assert vector.shape == (GLOBAL_DIM,) and abs(float(vector.norm()) - 1) < 1e-5
    assert meta == {"embedding_model": GLOBAL_MODEL}
    assert not (plain[0] / "global.safetensors").exists()
    for a, b, c in zip(plain, ignored, both):
        assert torch.equal(_lora_delta(a), _lora_delta(b))  # --depends face: global vectors are ignored
        assert not torch.allclose(_lora_delta(a), _lora_delta(c))  # same face, the global part differs
    info = json.loads((tmp_path / "both" / "synth.json").read_text())
    assert info["depends"] == "face+global" and info["global_dim"] == GLOBAL_DIM
    assert "global_dim" not in json.loads((tmp_path / "plain" / "synth.json").read_text())
    with pytest.raises(HypernetError, match="needs global vectors"):
        write_synth(tmp_path / "bad", SMALL_LAYOUT, 1, progress=False, depends="face+global")


# --- datasets ----------------------------------------------------------------------------------

def _records(n, global_dim=GLOBAL_DIM):
    gen = torch.Generator().manual_seed(0)
    return [DatasetRecord.in_memory(f"p{i}", torch.randn(SMALL_LAYOUT.num_values, generator=gen),
                                    mean_embedding(torch.randn(512, generator=gen)),
                                    mean_embedding(torch.randn(global_dim, generator=gen)) if global_dim else None)
            for i in range(n)]


def test_dataset_stores_global_features_with_their_encoder(tmp_path):
    records = _records(8)
    write_dataset(tmp_path, SMALL_LAYOUT, "face", records, heldout_fraction=0.25, global_encoder=ENCODER,
                  max_shard_bytes=3 * 4 * (SMALL_LAYOUT.num_values + 512 + GLOBAL_DIM))
    data = open_dataset(tmp_path)
    assert data.global_encoder == ENCODER and data.global_dim == GLOBAL_DIM
    by_id = {r.id: r.tensors() for r in records}
    for split in ("train", "heldout"):
        vectors, _, ids = data.load(split)
        features = data.load_global(split)
        assert features.shape == (len(ids), GLOBAL_DIM)
        for row, identity in enumerate(ids):
            assert torch.equal(features[row], by_id[identity][2]) and torch.equal(vectors[row], by_id[identity][0])
    # a face-only dataset has no global features and says how to get them
    write_dataset(tmp_path / "plain", SMALL_LAYOUT, "face", _records(4, 0), heldout_fraction=0.25)
    plain = open_dataset(tmp_path / "plain")
    assert plain.global_encoder is None and "global_encoder" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    with pytest.raises(HypernetError, match="no global image features"):
        plain.load_global("train")


def test_dataset_refuses_mixed_or_mismatched_global_features(tmp_path):
    with pytest.raises(HypernetError, match="no global image features, but the dataset has them"):
        write_dataset(tmp_path / "a", SMALL_LAYOUT, "face", _records(3, 0), global_encoder=ENCODER)
    with pytest.raises(HypernetError, match="without their encoder"):
        write_dataset(tmp_path / "b", SMALL_LAYOUT, "face", _records(3))
    with pytest.raises(HypernetError, match="global features have 8 values"):
        write_dataset(tmp_path / "c", SMALL_LAYOUT, "face", _records(3, 8), global_encoder=ENCODER)
    with pytest.raises(HypernetError, match="image-encoder record"):
        write_dataset(tmp_path / "d", SMALL_LAYOUT, "face", _records(3), global_encoder={"name": "x"})
    write_dataset(tmp_path / "e", SMALL_LAYOUT, "face", _records(3), global_encoder=ENCODER, heldout_fraction=0)
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    manifest["global_encoder"]["dim"] = 32  # the shards hold 16
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HypernetError, match="global_embeddings has shape"):
        open_dataset(tmp_path / "e")


# --- training, sampling, evaluation ------------------------------------------------------------

def test_training_records_the_condition_and_the_encoder(fused):
    model = load_hypernet(fused)
    assert model.condition == "face+global" and model.config.global_encoder == ENCODER
    assert model.config.global_dim == GLOBAL_DIM
    with safe_open(str(fused), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        keys = list(f.keys())
    assert config["condition"] == "face+global" and config["global_encoder"] == ENCODER
    assert any(k.startswith("prior.fusion.gate.") for k in keys)
    assert "condition: face+global" in model.describe()


def test_training_with_global_features_needs_a_dataset_that_has_them(tmp_path):
    data = make_dataset(tmp_path, identities=8)
    with pytest.raises(HypernetError, match="needs global image features, but .* has none"):
        train(data, tmp_path / "x.safetensors", quick_config(condition="global"), progress=False)


def test_an_interrupted_face_global_run_resumes_to_the_same_result(global_data, fused, tmp_path):
    out = tmp_path / "resumed.safetensors"

    def interrupt(phase, step):
        if (phase, step) == ("prior", 6):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(global_data, out, quick_config(condition="face+global"), progress=False, on_step=interrupt)
    assert state_path(out).exists()
    with pytest.raises(HypernetError, match="another model config"):  # same data, other condition
        train(global_data, out, quick_config(condition="global"), progress=False, resume=True)
    train(global_data, out, quick_config(condition="face+global"), progress=False, resume=True)
    with safe_open(str(out), framework="pt") as a, safe_open(str(fused), framework="pt") as b:
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())


def test_evaluate_uses_the_checkpoint_condition_and_checks_the_encoder(global_data, fused, tmp_path):
    result = evaluate(load_hypernet(fused), open_dataset(global_data), seeds=1, steps=3, progress=False)
    assert result["condition"] == "face+global" and 0 <= result["sampled"]["top1"] <= 1
    other = tmp_path / "other"
    other.mkdir()
    for file in global_data.iterdir():
        if file.is_file():
            (other / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["global_encoder"]["name"] = "ViT-H-14"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HypernetError, match="ViT-H-14"):
        evaluate(load_hypernet(fused), open_dataset(other), seeds=1, steps=3, progress=False)
    face_only = make_dataset(tmp_path / "face_only", identities=8)
    with pytest.raises(HypernetError, match="has no global features"):
        evaluate(load_hypernet(fused), open_dataset(face_only), seeds=1, steps=3, progress=False)


def test_cli_synth_dataset_train_sample_evaluate_with_face_and_global(tmp_path, capsys):
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(SMALL_LAYOUT.to_json())
    collection, data = tmp_path / "collection", tmp_path / "data"
    assert main(["synth", "--layout", str(layout_file), "--identities", "12", "--out", str(collection),
                 "--global-dim", str(GLOBAL_DIM), "--depends", "face+global"]) == 0
    assert main(["dataset", "--src", str(collection), "--out", str(data), "--heldout", "0.25"]) == 0
    assert json.loads((data / "manifest.json").read_text())["global_encoder"] == ENCODER
    config = tmp_path / "quick.json"
    config.write_text(json.dumps({"preset": "tiny", "ae_steps": 6, "prior_steps": 6, "condition": "face+global"}))
    ckpt = tmp_path / "fused.safetensors"
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--config", str(config), "--quiet"]) == 0
    capsys.readouterr()
    identity = collection / "id-00000"
    lora = tmp_path / "lora.safetensors"
    base = ["sample", "--ckpt", str(ckpt), "--steps", "3", "--out", str(lora)]
    assert main(base + ["--embedding", str(identity / "embedding.safetensors")]) == 1
    err = capsys.readouterr().err  # one wording with the nodes and the library (condition_inputs.py)
    assert "needs a face embedding and global image features" in err and "no global image features" in err
    assert not lora.exists()
    assert main(base + ["--global-features", str(identity / "global.safetensors")]) == 1
    assert "needs a face" in capsys.readouterr().err
    assert main(base + ["--embedding", str(identity / "embedding.safetensors"),
                        "--global-features", str(identity / "global.safetensors")]) == 0
    assert sorted(read_lora(lora)) == sorted(SMALL_LAYOUT.names)
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert meta["condition"] == "face+global" and meta["global_encoder"] == GLOBAL_MODEL
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(data), "--json", "--seeds", "1", "--steps", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["condition"] == "face+global" and result["count"]["heldout"] == 3
    # a face-only checkpoint refuses global features it would ignore
    face_ckpt = tmp_path / "face.safetensors"
    config.write_text(json.dumps({"preset": "tiny", "ae_steps": 3, "prior_steps": 3}))
    assert main(["train", "--data", str(data), "--out", str(face_ckpt), "--config", str(config), "--quiet"]) == 0
    assert main(["sample", "--ckpt", str(face_ckpt), "--steps", "3", "--out", str(tmp_path / "f.safetensors"),
                 "--embedding", str(identity / "embedding.safetensors"),
                 "--global-features", str(identity / "global.safetensors")]) == 1
    assert "reads no global image features" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(face_ckpt), "--steps", "3", "--out", str(tmp_path / "f.safetensors"),
                 "--embedding", str(identity / "embedding.safetensors"), "--global-arch", "ViT-H-14"]) == 1
    assert "--global-arch NAME goes with --global-encoder FILE" in capsys.readouterr().err
    assert not (tmp_path / "f.safetensors").exists()


def test_global_only_condition_trains_and_samples_without_a_face(global_data, tmp_path):
    out = tmp_path / "global.safetensors"
    model = train(global_data, out, quick_config(condition="global", prior={"kind": "transformer", "tokens": 4,
                                                                            "token_width": 16, "depth": 1,
                                                                            "heads": 2}), progress=False)
    assert model.condition == "global" and model.config.prior.kind == "transformer"
    loaded = load_hypernet(out)
    features = open_dataset(global_data).load_global("heldout")
    vectors = loaded.decode_latents(sample_latents(loaded, None, global_features=features, seed=0, steps=3))
    assert vectors.shape == (len(features), SMALL_LAYOUT.num_values)
    result = evaluate(load_hypernet(out), open_dataset(global_data), seeds=1, steps=3, progress=False)
    assert result["condition"] == "global"



def test_sample_cli_encodes_the_reference_photos_with_the_checkpoint_image_encoder(tmp_path, capsys):
    """`sample --face PHOTO --global-encoder FILE --global-arch NAME` for a global-only hypernet,
    with the tiny open_clip ViT of global_support; weights of another seed are refused."""
    from PIL import Image

    from global_support import TINY_ARCH, TINY_DIM, register_tiny_arch, tiny_encoder_info, write_open_clip_file
    from hypernet.model.autoencoder import AutoencoderConfig
    from hypernet.model.checkpoint import save_hypernet
    from hypernet.model.hypernet import Hypernet, HypernetConfig
    from hypernet.model.prior_config import PriorConfig

    register_tiny_arch()
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig(layout=SMALL_LAYOUT, embedding_model="face", condition="global",
                                    global_dim=TINY_DIM, global_encoder=tiny_encoder_info(0),
                                    autoencoder=AutoencoderConfig(latent_dim=8, hidden=16, blocks=1),
                                    prior=PriorConfig(width=16, blocks=1, time_dim=8)))
    ckpt = tmp_path / "global.safetensors"
    save_hypernet(model, ckpt)
    photo = tmp_path / "person.png"
    Image.fromarray((torch.rand(80, 72, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(photo)
    same, other = write_open_clip_file(tmp_path / "clip.safetensors", 0), write_open_clip_file(tmp_path / "o.safetensors", 1)
    out = tmp_path / "lora.safetensors"
    args = ["sample", "--ckpt", str(ckpt), "--steps", "2", "--out", str(out), "--face", str(photo),
            "--global-arch", TINY_ARCH]
    assert main(args + ["--global-encoder", str(other)]) == 1
    assert "different weights" in capsys.readouterr().err and not out.exists()
    assert main(args) == 1
    assert "needs global image features" in capsys.readouterr().err
    assert main(args + ["--global-encoder", str(same)]) == 0
    assert sorted(read_lora(out)) == sorted(SMALL_LAYOUT.names)
