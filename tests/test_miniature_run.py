"""`make miniature` end to end at CI size: twelve URW faces play the families (nine train, three
held out), every stage runs as the user-facing command it is, and each stage's output is checked
for what the next one and the reader need. Then a re-run finds everything done, and a stage whose
output is removed runs again alone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import font_support
from comfy_support import REPO



def run_miniature(work: Path, font_list: Path, models: Path, results: Path, *extra: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "miniature", "run", "--scale", "ci", "--work", str(work),
                           "--font-list", str(font_list), "--ship-to", str(models), "--results", str(results),
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniature")
    font_list = font_support.write_urw_font_list(root / "fonts.tsv")
    results = root / "benchmarks"
    results.mkdir()
    (results / "RESULTS.md").write_text("# Results\n\n## An earlier section\n\nkept\n")
    proc = run_miniature(root / "work", font_list, root / "models", results)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, font_list, proc.stdout


def test_every_stage_ran_in_order(miniature):
    root, _, out = miniature
    stages = ["fonts", "base+encoder", "identities", "collect", "dataset", "hypernet", "evaluate", "report", "ship"]
    positions = [out.index(f"] {stage}\n") for stage in stages]
    assert positions == sorted(positions)
    timings = json.loads((root / "work" / "timings.json").read_text())
    assert set(timings) == set(stages)


def test_identity_folders_hold_glyphs_captions_and_the_encoders_embedding(miniature):
    root, _, _ = miniature
    ids = root / "work" / "identities"
    assert sorted(p.name for p in (ids / "heldout").iterdir()) == sorted(font_support.URW_HELDOUT)
    folder = ids / "train" / "C059-Roman"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 62
    assert [(folder / f"{p.stem}.txt").read_text() for p in pngs[:3]] == ["A", "B", "C"]
    with safe_open(str(folder / "embedding.safetensors"), "pt") as f:
        embedding = f.get_tensor("embedding")
        assert "typeface" in f.metadata()["embedding_model"]
    assert embedding.shape == (512,) and abs(float(embedding.norm()) - 1.0) < 1e-4


def test_collections_have_one_lora_per_family_and_keep_the_embedding(miniature):
    root, _, _ = miniature
    for split, faces in (("train", font_support.URW_TRAIN), ("heldout", font_support.URW_HELDOUT)):
        folders = sorted((root / "work" / "collection" / split).iterdir())
        folders = [f for f in folders if f.is_dir()]
        assert len(folders) == len(faces)
        for folder in folders:
            assert (folder / "lora.safetensors").is_file() and (folder / "embedding.safetensors").is_file()
            record = json.loads((folder / "collect.json").read_text())
            assert record["final_loss"] < record["base_loss"], record


def test_evaluation_has_every_method_and_the_calibration_row(miniature):
    root, _, _ = miniature
    numbers = json.loads((root / "work" / "eval" / "evaluate.json").read_text())
    assert set(numbers["methods"]) == {"base", "nearest", "mean", "hypernet", "hypernet+refine2", "trained"}
    assert numbers["heldout_identities"] == len(font_support.URW_HELDOUT)
    for row in numbers["methods"].values():
        assert -1.0 <= row["mean"] <= 1.0
    assert "calibration" in numbers


def test_report_writes_miniature_json_results_section_and_picture(miniature):
    root, font_list, _ = miniature
    results = root / "benchmarks"
    summary = json.loads((results / "miniature.json").read_text())
    hypernet = summary["methods"]["hypernet"]
    assert hypernet["heldout_families"] == len(font_support.URW_HELDOUT)
    assert {"mean", "sem", "seconds_per_identity", "gap_closed", "speedup"} <= set(hypernet)
    assert set(summary["targets"]) == {"gap_closed_at_least_0.7", "beats_nearest_by_more_than_sem",
                                       "beats_mean_by_more_than_sem", "speedup_at_least_1000",
                                       "speedup_alone_at_least_1000"}
    text = (results / "RESULTS.md").read_text()
    assert text.count("## Typeface miniature") == 1 and "## An earlier section\n\nkept" in text
    # the first held-out family was trained again alone, and the hypernet is set against that too
    alone = summary["trained_alone"]
    lone = [p for p in (root / "work" / "lone" / "collection").iterdir() if p.is_dir()]
    assert [p.name for p in lone] == sorted(font_support.URW_HELDOUT)[:1] and alone["families"] == 1
    assert "group_size" not in json.loads((lone[0] / "collect.json").read_text())
    assert hypernet["speedup_alone"] == pytest.approx(alone["seconds_per_identity"] / hypernet["seconds_per_identity"])
    assert "trained alone" in text
    # paired differences per family: their means are the differences of the methods' means
    paired = summary["paired"]
    assert {"hypernet - base", "hypernet - mean", "hypernet - nearest", "trained - hypernet", "trained - nearest",
            "hypernet+refine2 - hypernet"} == set(paired)
    for name, row in paired.items():
        a, b = name.split(" - ")
        assert row["identities"] == len(font_support.URW_HELDOUT)
        assert row["mean"] == pytest.approx(summary["methods"][a]["mean"] - summary["methods"][b]["mean"], abs=1e-9)
    assert "Paired over the families" in text and "| hypernet - nearest |" in text
    assert (results / "miniature.png").stat().st_size > 1000
    # the identity scale was chosen on the dataset's held-out training families and is what ships
    choice = summary["identity_scale"]
    assert choice["chosen"] in (1.0, 2.0) and set(choice["validation_similarity"]) == {"1", "2"}
    assert choice["validation_families"] >= 1 and "Identity scale" in text
    from hypernet.model.checkpoint import load_hypernet
    assert load_hypernet(root / "work" / "typeface_hypernet.safetensors").config.identity_scale == choice["chosen"]
    assert load_hypernet(root / "work" / "hypernet_trained.safetensors").config.identity_scale == 1.0
    # A re-run skips every finished stage and replaces the section instead of adding a second one.
    proc = run_miniature(root / "work", font_list, root / "models", results, "--stages", "report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "RESULTS.md").read_text().count("## Typeface miniature") == 1


def test_shipped_files_load_as_the_nodes_load_them(miniature):
    root, _, _ = miniature
    from hypernet.model.checkpoint import load_hypernet
    from miniature.ship import SHIP_LIMIT, shipped_paths
    shipped = shipped_paths(root / "models")
    total = sum(p.stat().st_size for p in shipped.values() if p.is_file()) + \
        sum(p.stat().st_size for p in shipped["encoder"].glob("*.onnx"))
    assert total < SHIP_LIMIT
    with safe_open(str(shipped["hypernet"]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    half = load_hypernet(shipped["hypernet"])
    full = load_hypernet(root / "work" / "typeface_hypernet.safetensors")
    for (name, a), b in zip(half.state_dict().items(), full.state_dict().values()):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-2 * (1 + float(b.abs().max())), rtol=1e-2, msg=name)
    assert (shipped["encoder"] / "typeface_arcface.onnx").is_file()


def test_a_removed_stage_output_runs_that_stage_again_alone(miniature):
    root, font_list, _ = miniature
    manifest = root / "work" / "dataset" / "manifest.json"
    shutil.rmtree(manifest.parent)  # the stage's whole output
    timings_file = root / "work" / "timings.json"
    before = json.loads(timings_file.read_text())
    proc = run_miniature(root / "work", font_list, root / "models", root / "benchmarks", "--stages",
                         "base,encoder,identities,collect,dataset,hypernet,evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "  $ python -m hypernet dataset" in proc.stdout
    # stages that found their work done keep the time the work took, though a resuming collect
    # takes seconds to find that out
    after = json.loads(timings_file.read_text())
    for stage in ("base+encoder", "identities", "collect", "hypernet", "evaluate"):
        assert after[stage] == before[stage], (stage, before, after)
    # collect always runs: it skips the identities it finished itself (resume), so it is not listed
    for command in ("miniature.train_base", "miniature train-encoder", "hypernet train", "hypernet evaluate-images"):
        assert f"$ python -m {command}" not in proc.stdout
    assert manifest.is_file()
    # a retrained hypernet gets its identity scale chosen again, not the old hypernet's choice
    choice = root / "work" / "eval" / "identity_scale.json"
    choice.write_text(json.dumps({"chosen": 7.0, "validation_similarity": {}, "validation_families": 0}))
    (root / "work" / "hypernet_trained.safetensors").unlink()
    proc = run_miniature(root / "work", font_list, root / "models", root / "benchmarks", "--stages", "hypernet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(choice.read_text())["chosen"] in (1.0, 2.0)
    assert "$ python -m hypernet evaluate-images" in proc.stdout


def test_training_alone_counts_only_lone_trainings(tmp_path):
    from miniature.report import training_alone
    for name, record in (("a", {"status": "done", "train_seconds": 30.0}),
                         ("b", {"status": "done", "train_seconds": 50.0}),
                         ("grouped", {"status": "done", "train_seconds": 2.0, "group_size": 32}),
                         ("failed", {"status": "skipped", "train_seconds": 1.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "collect.json").write_text(json.dumps(record))
    alone = training_alone(tmp_path, {"seconds_per_identity": 0.08})
    assert alone["families"] == 2 and alone["seconds_per_identity"] == pytest.approx(40.0)
    assert alone["speedup"] == pytest.approx(500.0)
    assert training_alone(tmp_path / "absent", {"seconds_per_identity": 0.08}) is None


def test_beating_another_method_is_judged_on_the_paired_difference():
    from miniature.report import targets
    methods = {"hypernet": {"mean": 0.10, "sem": 0.03}, "nearest": {"mean": 0.08, "sem": 0.03},
               "mean": {"mean": 0.09, "sem": 0.03}}
    paired = {"hypernet - nearest": {"mean": 0.02, "sem": 0.005}, "hypernet - mean": {"mean": 0.01, "sem": 0.02}}
    t = targets(methods, paired)
    assert t["beats_nearest_by_more_than_sem"] is True  # 0.02 > 0.005, though 0.02 < the unpaired 0.03
    assert t["beats_mean_by_more_than_sem"] is False
    assert targets(methods)["beats_nearest_by_more_than_sem"] is False  # no per-family scores: unpaired
