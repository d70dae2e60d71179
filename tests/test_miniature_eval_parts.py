"""The miniature evaluates held-out families in several processes; merging their reports must
give what one process over all of them reports."""
from __future__ import annotations

import pytest

from hypernet.pipeline.identity_scores import MethodScores, report
from miniature.eval_parts import merge, split_identities

SCORES = {"base": [0.1, -0.2, 0.0, 0.3, 0.05], "hypernet": [0.3, 0.1, 0.2, 0.4, 0.2], "trained": [0.5, 0.4, 0.6, 0.7, 0.5]}
SECONDS = {"base": [0.0] * 5, "hypernet": [0.1, 0.2, 0.1, 0.3, 0.2], "trained": [3.0, 3.0, 2.0, 2.0, 2.0]}
CALIBRATION = [0.8, 0.9, 0.85, 0.7, 0.75]


def one_report(ids: list[int]) -> dict:
    rows = []
    for name in SCORES:
        row = MethodScores(name)
        for i in ids:
            row.scores[f"id{i}"], row.seconds[f"id{i}"] = SCORES[name][i], SECONDS[name][i]
        rows.append(row)
    calibration = MethodScores("same identity, other reference", {f"id{i}": CALIBRATION[i] for i in ids})
    numbers = report(rows, calibration, ("hypernet",))
    numbers.update(heldout_identities=len(ids), prompts=["A"], seeds=[0])
    return numbers


def test_merged_parts_equal_one_report_over_all_identities():
    whole = one_report([0, 1, 2, 3, 4])
    merged = merge([one_report([0, 2, 4]), one_report([1, 3])])
    assert merged["heldout_identities"] == 5
    for name, row in whole["methods"].items():
        for key in ("mean", "sem", "gap_closed", "speedup"):
            if key in row:
                assert merged["methods"][name][key] == pytest.approx(row[key]), (name, key)
        assert merged["methods"][name]["per_identity"] == row["per_identity"]
    # seconds: only each part's mean travels; the overall mean per identity is still exact
    assert merged["methods"]["hypernet"]["seconds_per_identity"] == pytest.approx(0.18)
    assert merged["calibration"]["mean"] == pytest.approx(whole["calibration"]["mean"])


def test_split_links_every_identity_into_exactly_one_part(tmp_path):
    heldout = tmp_path / "heldout"
    for name in ("a", "b", "c", "d", "e"):
        (heldout / name).mkdir(parents=True)
    (heldout / ".partial-f").mkdir()
    parts = split_identities(heldout, tmp_path / "parts", 2)
    seen = [sorted(p.name for p in part.iterdir()) for part in parts]
    assert seen == [["a", "c", "e"], ["b", "d"]]
    assert all((part / n).resolve() == (heldout / n).resolve() for part, names in zip(parts, seen) for n in names)
    assert split_identities(heldout, tmp_path / "parts", 2) == parts  # again: the links are kept
