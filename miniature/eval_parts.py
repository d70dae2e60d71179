"""evaluate-images over the held-out families in several processes (one per core), merged.

Each part is a folder of links to some held-out identity folders; every part runs the same
command with the same prompts and seeds, so the merged numbers are those one process would
report: per-identity scores are pooled, means and standard errors recomputed over all
identities, seconds averaged over identities, gap_closed and speedup recomputed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from hypernet.pipeline.identity_scores import CALIBRATION, MethodScores, report


def split_identities(heldout: Path, parts_dir: Path, parts: int) -> list[Path]:
    """parts_dir/part-<i>/ with links to every `parts`-th identity folder (sorted order)."""
    folders = sorted(p for p in heldout.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = []
    for i in range(parts):
        part = parts_dir / f"part-{i}"
        part.mkdir(parents=True, exist_ok=True)
        for folder in folders[i::parts]:
            link = part / folder.name
            if not link.exists():
                os.symlink(folder.resolve(), link, target_is_directory=True)
        out.append(part)
    return out


def merge(reports: list[dict]) -> dict:
    """One evaluate-images report from the reports of disjoint identity sets."""
    names = list(reports[0]["methods"])
    methods = []
    for name in names:
        scores = MethodScores(name)
        for numbers in reports:
            row = numbers["methods"][name]
            scores.scores.update(row["per_identity"])
            # Only the part's mean time is reported; each identity of the part gets it, which
            # keeps the overall mean per identity exact.
            scores.seconds.update({i: row["seconds_per_identity"] for i in row["per_identity"]})
            scores.notes.update(row.get("sources", {}))
        methods.append(scores)
    calibration = MethodScores(CALIBRATION)
    for numbers in reports:
        calibration.scores.update((numbers.get("calibration") or {}).get("per_identity", {}))
    gap_methods = tuple(n for n in names if "gap_closed" in reports[0]["methods"][n])
    merged = report(methods, calibration, gap_methods)
    first = reports[0]
    merged.update({k: v for k, v in first.items() if k not in ("methods", "calibration")})
    merged["heldout_identities"] = sum(r["heldout_identities"] for r in reports)
    merged["images_without_subject"] = {}
    return merged


def merge_files(parts: list[Path], out: Path) -> dict:
    from hypernet.common.files import write_text_atomic
    merged = merge([json.loads(p.read_text()) for p in parts])
    write_text_atomic(out, json.dumps(merged, indent=1) + "\n")
    return merged
