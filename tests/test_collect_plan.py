"""collect's planning, without ComfyUI: seeds, captions, resuming and refusals."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from comfy_support import REPO, write_tiny_checkpoint
from hypernet.collect.jobs import (RECORD_FILE, RunSpec, TrainingSettings, check_template, identity_seed,
                                   plan_run)
from hypernet.errors import HypernetError
from hypernet.lora.presets import preset


def spec(src, out, **settings) -> RunSpec:
    return RunSpec(src=str(src), out=str(out), base_checkpoint="base.safetensors", base_sha256="0" * 64,
                   layout=preset("tiny-attn-r4").to_dict(), layout_name="tiny-attn-r4",
                   settings=TrainingSettings(**settings), trainer="lora_training")


def photo_folder(path, *names):
    path.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(path / name)
    return path


def test_identity_seeds_depend_on_the_run_seed_and_name_only():
    assert identity_seed(7, "anna") == identity_seed(7, "anna")
    assert len({identity_seed(7, "anna"), identity_seed(7, "bert"), identity_seed(8, "anna")}) == 3


def test_captions_come_from_txt_files_beside_photos_else_the_template(tmp_path):
    folder = photo_folder(tmp_path / "src" / "anna", "a.png", "b.jpg")
    (folder / "a.txt").write_text("  {token} person\nat the beach ")
    plan = plan_run(spec(tmp_path / "src", tmp_path / "out", token="ohwx", caption_template="photo of {token}"))
    (job,) = plan.jobs
    assert job.captions == ["ohwx person at the beach", "photo of ohwx"]
    assert job.caption_files == [str(folder / "a.txt")]


@pytest.mark.parametrize("template, fragment", [("a photo of {name}", "names name"), ("a {", "not a valid template")])
def test_bad_caption_templates_are_refused(template, fragment):
    with pytest.raises(HypernetError, match=fragment):
        check_template(template, "--caption-template")


def test_finished_identities_are_skipped_and_stale_partials_removed(tmp_path):
    photo_folder(tmp_path / "src" / "anna", "a.png")
    photo_folder(tmp_path / "src" / "bert", "a.png")
    run = spec(tmp_path / "src", tmp_path / "out", steps=5)
    (tmp_path / "out" / "anna").mkdir(parents=True)
    (tmp_path / "out" / "anna" / RECORD_FILE).write_text(f'{{"key": {__import__("json").dumps(run.key())}}}')
    (tmp_path / "out" / ".partial-bert").mkdir()
    plan = plan_run(run)
    assert plan.finished == ["anna"] and [j.id for j in plan.jobs] == ["bert"]
    assert not (tmp_path / "out" / ".partial-bert").exists()
    with pytest.raises(HypernetError, match=r"other settings \(settings.steps differ\)"):
        plan_run(spec(tmp_path / "src", tmp_path / "out", steps=6))


def test_a_folder_not_written_by_collect_is_not_overwritten(tmp_path):
    photo_folder(tmp_path / "src" / "anna", "a.png")
    (tmp_path / "out" / "anna").mkdir(parents=True)
    with pytest.raises(HypernetError, match="not written by collect"):
        plan_run(spec(tmp_path / "src", tmp_path / "out"))


def test_ray_option_without_ray_installed_says_how_to_install_it(tmp_path):
    photo_folder(tmp_path / "src" / "anna", "a.png")
    write_tiny_checkpoint(tmp_path / "base.safetensors")
    # sys.modules["ray"] = None makes `import ray` fail exactly as when it is not installed.
    code = ("import sys; sys.modules['ray'] = None; from hypernet.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "collect", "--src", str(tmp_path / "src"), "--base",
                             str(tmp_path / "base.safetensors"), "--layout", "tiny-attn-r4", "--out",
                             str(tmp_path / "out"), "--ray", "local"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --ray needs the `ray` package, which is not installed: pip install")


def test_an_init_lora_of_another_layout_is_refused_before_training(tmp_path):
    from safetensors.torch import save_file

    from hypernet.collect.run import collect
    from random_weights import random_kohya_state

    photo_folder(tmp_path / "src" / "anna", "a.png")
    write_tiny_checkpoint(tmp_path / "base.safetensors")
    save_file(random_kohya_state(preset("tiny-attn-r4").with_rank(2)), str(tmp_path / "init.safetensors"))
    with pytest.raises(HypernetError, match=r"--init LoRA .* does not fit the layout: module \S+ is \d+x\d+ at rank 2"):
        collect(tmp_path / "src", tmp_path / "base.safetensors", "tiny-attn-r4", tmp_path / "out",
                init_lora=tmp_path / "init.safetensors", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists(),
                    reason="a Ray cluster was started on this machine (`ray start`), so --ray auto would join it")
def test_ray_auto_without_a_cluster_says_how_to_start_one(tmp_path):
    photo_folder(tmp_path / "src" / "anna", "a.png")
    write_tiny_checkpoint(tmp_path / "base.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "hypernet", "collect", "--src", str(tmp_path / "src"), "--base",
                             str(tmp_path / "base.safetensors"), "--layout", "tiny-attn-r4", "--out",
                             str(tmp_path / "out"), "--ray", "auto", "--quiet"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "error: no Ray cluster answers on this machine" in result.stderr
    assert "`ray start --head`" in result.stderr


def test_a_learning_rate_schedule_is_part_of_the_key_and_a_constant_rate_keeps_older_keys(tmp_path):
    photo_folder(tmp_path / "src" / "anna", "a.png")
    constant = spec(tmp_path / "src", tmp_path / "out", steps=5)
    # A record written before the schedule existed has no lr_schedule in its key: still finished.
    assert "lr_schedule" not in constant.key()["settings"]
    (tmp_path / "out" / "anna").mkdir(parents=True)
    (tmp_path / "out" / "anna" / RECORD_FILE).write_text(f'{{"key": {__import__("json").dumps(constant.key())}}}')
    assert plan_run(constant).finished == ["anna"]
    cosine = spec(tmp_path / "src", tmp_path / "out", steps=5, lr_schedule="cosine")
    assert cosine.key()["settings"]["lr_schedule"] == "cosine"
    with pytest.raises(HypernetError, match=r"other settings \(settings.lr_schedule differ\)"):
        plan_run(cosine)
    with pytest.raises(HypernetError, match="--lr-schedule must be one of constant, cosine"):
        TrainingSettings(lr_schedule="linear")
