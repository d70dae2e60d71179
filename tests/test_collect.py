"""`python -m hypernet collect` on the tiny SDXL model: identity LoRAs trained through ComfyUI by
lora_training, in one process (killed once and resumed), in two worker processes and as tasks of
a real local Ray instance; broken identities reported while the others finish.

The base is the marked stand-in checkpoint of the trainable tiny SDXL model
(comfy_support.write_tiny_checkpoint, TINY_TRAINABLE_CHECKPOINT_MARK): every worker
loads the test pack (tests/fixture_nodes) through collect's --preload hook, so ComfyUI's own
checkpoint loader gives the tiny SDXL model there, as it does in the test server.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_support
from comfy_support import REPO, patched_weights, write_tiny_checkpoint
from face_models import synthetic_photo, write_face_models
from hypernet.collect.jobs import RECORD_FILE, RUN_FILE
from hypernet.data.builder import build_dataset
from hypernet.lora.layout import kohya_unet_name
from hypernet.lora.lora_io import layout_from_lora, read_lora
from hypernet.lora.presets import preset

LAYOUT = "tiny-attn-r4"
GOOD = [f"person{i}" for i in range(6)]
BROKEN = {"no_photos": "no photos", "unreadable": "unreadable photo", "no_face": "photo without a usable face"}
STEPS, LEARNING_RATE = 16, 0.02
# Each LoRA must fit its own photos better than the base model by at least this fraction.
MARGIN = 0.03
TIMEOUT = 600


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Six identities (two photos each, one with a .txt caption), three broken ones, the base
    checkpoint and the generated face models."""
    root = tmp_path_factory.mktemp("collect")
    src = root / "identities"
    for index, name in enumerate(GOOD):
        folder = src / name
        folder.mkdir(parents=True)
        for k in range(2):
            photo = synthetic_photo(96, 96, [(16 + 8 * k, 16, 56, index)], seed=10 * index + k)
            Image.fromarray(photo).save(folder / f"{k}.png")
        (folder / "0.txt").write_text("a close-up photo of {token} person")
    (src / "no_photos").mkdir()
    (src / "unreadable").mkdir()
    (src / "unreadable" / "0.jpg").write_bytes(b"this is no jpeg")
    (src / "no_face").mkdir()
    Image.fromarray(synthetic_photo(96, 96, [], seed=99)).save(src / "no_face" / "0.png")
    base = root / "tiny-sdxl.safetensors"
    write_tiny_checkpoint(base, comfy_support.TINY_TRAINABLE_CHECKPOINT_MARK)
    faces = write_face_models(root / "insightface" / "buffalo_l")["folder"]
    return {"root": root, "src": src, "base": base, "faces": faces}


def collect_command(source, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hypernet", "collect", "--src", str(source["src"]), "--base", str(source["base"]),
            "--layout", LAYOUT, "--out", str(out), "--steps", str(STEPS), "--learning-rate", str(LEARNING_RATE),
            "--resolution", "64", "--seed", "7", "--face-model", str(source["faces"]), "--threads", "1",
            "--preload", str(REPO / "tests" / "fixture_nodes"), "--quiet", *extra]


def environment() -> dict:
    return dict(os.environ, COMFYUI_PATH=str(comfy_support.COMFYUI_PATH), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_collect(source, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(collect_command(source, out, *extra), cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob(f"*/{RECORD_FILE}"))}


def loras(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file
    return {name: load_file(out / name / "lora.safetensors") for name in GOOD}


@pytest.fixture(scope="module")
def local_run(source):
    """One process: killed as soon as its first identity is written, then run again to the end."""
    out = source["root"] / "local"
    log = source["root"] / "killed.log"
    with open(log, "w") as stream:
        proc = subprocess.Popen(collect_command(source, out), cwd=REPO, env=environment(), stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list(out.glob(f"*/{RECORD_FILE}")):
            assert proc.poll() is None, f"collect ended before writing an identity:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no identity written in time"
            time.sleep(0.05)  # polling for the file, not waiting for luck
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {name: (out / name / "lora.safetensors").stat().st_ino for name in records(out)}
    resumed = run_collect(source, out)
    return {"out": out, "before": before, "resumed": resumed}


@pytest.fixture(scope="module", params=[("--workers", "2"), ("--ray", "local", "--workers", "2")],
                ids=["workers2", "ray2"])
def parallel_run(request, source):
    out = source["root"] / request.param[1]
    return {"out": out, "result": run_collect(source, out, *request.param)}


def test_killed_run_resumes_without_redoing_finished_identities(local_run):
    out, before, resumed = local_run["out"], local_run["before"], local_run["resumed"]
    assert 1 <= len(before) < len(GOOD), before
    assert resumed.returncode == 3, resumed.stderr[-3000:]  # finished, with the broken identities failed
    assert f"{len(before)} identities finished by an earlier run are skipped" in resumed.stderr
    assert sorted(records(out)) == GOOD
    for name, inode in before.items():  # skipped, not trained and written again
        assert (out / name / "lora.safetensors").stat().st_ino == inode
    assert not [p.name for p in out.iterdir() if p.name.startswith(".partial-")]
    run = json.loads((out / RUN_FILE).read_text())
    assert sorted(run["finished_before"]) == sorted(before)
    assert sorted(run["trained"]) == sorted(set(GOOD) - set(before))


def test_broken_identities_are_reported_with_their_reason(local_run):
    resumed, out = local_run["resumed"], local_run["out"]
    failed = {f["id"]: f for f in json.loads((out / RUN_FILE).read_text())["failed"]}
    assert {name: f["kind"] for name, f in failed.items()} == BROKEN
    assert "No face detected" in failed["no_face"]["reason"]
    assert "Cannot read image" in failed["unreadable"]["reason"]
    for name in BROKEN:
        assert f"failed {name}: {BROKEN[name]}" in resumed.stderr
        assert f"  {name}: {BROKEN[name]}:" in resumed.stdout  # the summary table lists it
        assert not (out / name).exists()


def test_each_lora_fits_its_identity_better_than_the_base_and_matches_the_layout(local_run):
    out = local_run["out"]
    for name, record in records(out).items():
        assert record["steps"] == STEPS
        assert record["final_loss"] < (1 - MARGIN) * record["base_loss"], (name, record)
        assert record["captions"] == ["a close-up photo of sks person", "a photo of sks person"]
        lora = read_lora(out / name / "lora.safetensors")
        assert layout_from_lora(lora, "sdxl") == preset(LAYOUT)
        assert lora.metadata["collect_identity"] == name
    seeds = {r["seed"] for r in records(out).values()}
    assert len(seeds) == len(GOOD), "each identity has its own seed"


def test_collection_loads_in_the_stock_lora_loader(comfy, local_run, tiny_sdxl, loras_dir):
    import nodes as comfy_nodes

    lora_file = local_run["out"] / GOOD[0] / "lora.safetensors"
    (loras_dir / "collected.safetensors").write_bytes(lora_file.read_bytes())
    before = {k: v.clone() for k, v in tiny_sdxl.model.state_dict().items()}
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny_sdxl, "collected.safetensors", 1.0)
    after = patched_weights(comfy, patched)
    lora = read_lora(lora_file)
    assert len(patched.patches) == len(lora) == len(preset(LAYOUT))
    for key in before:  # exactly the layout's weights move, each by its module's (alpha / rank) up @ down
        name = kohya_unet_name(key)
        expected = before[key] + lora[name].delta() if name in lora else before[key]
        torch.testing.assert_close(after[key], expected, rtol=1e-5, atol=1e-6, msg=key)


def test_dataset_reads_the_collection(local_run, tmp_path):
    result = build_dataset(local_run["out"], tmp_path / "dataset", layout=preset(LAYOUT), heldout=0.34, seed=0,
                           progress=False)
    assert sorted(result.kept) == GOOD and not result.skipped
    assert result.embedding_model.startswith("insightface")


def test_workers_and_ray_train_the_same_loras_as_one_process(local_run, parallel_run):
    result = parallel_run["result"]
    assert result.returncode == 3, result.stderr[-3000:]
    assert sorted(records(parallel_run["out"])) == GOOD
    assert {f["id"] for f in json.loads((parallel_run["out"] / RUN_FILE).read_text())["failed"]} == set(BROKEN)
    ours, theirs = loras(local_run["out"]), loras(parallel_run["out"])
    for name in GOOD:
        assert ours[name].keys() == theirs[name].keys()
        for key, value in ours[name].items():
            assert torch.equal(value, theirs[name][key]), (name, key)


def test_rerun_with_other_settings_is_refused(source, local_run):
    command = collect_command(source, local_run["out"])
    command[command.index("--steps") + 1] = str(STEPS + 1)
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "trained with other settings (settings.steps differ)" in result.stderr


def test_init_starts_every_identity_from_the_given_lora(source, local_run, tmp_path):
    src = tmp_path / "one"
    shutil.copytree(source["src"] / GOOD[1], src / GOOD[1])
    init = local_run["out"] / GOOD[0] / "lora.safetensors"
    result = run_collect(dict(source, src=src), tmp_path / "out", "--init", str(init))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = records(tmp_path / "out").values()
    assert record["init_lora"] == "lora.safetensors" and record["key"]["init_sha256"]
    fresh = records(local_run["out"])[GOOD[1]]
    assert record["base_loss"] == pytest.approx(fresh["base_loss"], rel=1e-6)  # same photos, noise and timesteps
    assert record["initial_loss"] != pytest.approx(record["base_loss"], rel=1e-4)  # it did not start from zero
