"""The miniature's numbers: benchmarks/miniature.json, its section of RESULTS.md, the picture.

miniature.json is evaluate-images' report reduced to what the issue asks for per method (mean
identity similarity, standard error, seconds per identity; for the hypernet LoRA gap_closed,
speedup and heldout_families), with the calibration row, the targets checked and each stage's time;
`trained_alone` is per-family training timed one family per step (run.py's train_alone), against
which the hypernet's `speedup_alone` is what a user with one new typeface gains.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from hypernet.common.files import write_text_atomic
from hypernet.pipeline.identity_scores import format_table, paired_difference

SECTION = "## Typeface miniature: images personalized on held-out typefaces (issue 17, `make miniature`)"
HYPERNET, NEAREST, MEAN, BASE, TRAINED = "hypernet", "nearest", "mean", "base", "trained"
PAIRS = ((HYPERNET, BASE), (HYPERNET, MEAN), (HYPERNET, NEAREST), (TRAINED, HYPERNET), (TRAINED, NEAREST))


def summarize(evaluation: dict, timings: dict, scale, eval_dir: Path, alone_dir: Path | None = None) -> dict:
    methods = {}
    for name, row in evaluation["methods"].items():
        kept = {k: row.get(k) for k in ("mean", "sem", "seconds_per_identity")}
        for extra in ("gap_closed", "speedup"):
            if extra in row:
                kept[extra] = row[extra]
        methods[name] = kept
    heldout = evaluation["heldout_identities"]
    if HYPERNET in methods:
        methods[HYPERNET]["heldout_families"] = heldout
    alone = training_alone(alone_dir, methods.get(HYPERNET))
    if alone and "speedup" in alone:
        methods[HYPERNET]["speedup_alone"] = alone["speedup"]
    paired = paired_rows(evaluation["methods"])
    return {"methods": methods, "paired": paired, "trained_alone": alone,
            "calibration": evaluation.get("calibration", {}) and
            {k: evaluation["calibration"][k] for k in ("name", "mean", "sem")},
            "heldout_families": heldout, "targets": targets(methods, paired), "stage_seconds": timings,
            "conditioning": conditioning_rows(eval_dir, methods, scale.hypernet_config),
            "prompts": evaluation["prompts"], "seeds": evaluation["seeds"], "sampler": evaluation["sampler"],
            "identity_scale": identity_scale_choice(eval_dir),
            "scale": asdict(scale), "threads": 1, "load_average": [round(x, 2) for x in os.getloadavg()]}


def paired_rows(methods: dict) -> dict:
    """"a - b": the paired difference per family (identity_scores.paired_difference) for the
    comparisons the issue's targets make, and each hypernet+Refine against the hypernet alone."""
    pairs = [*PAIRS, *((name, HYPERNET) for name in methods if name.startswith(HYPERNET + "+"))]
    rows = {}
    for a, b in pairs:
        scores_a, scores_b = methods.get(a, {}).get("per_identity"), methods.get(b, {}).get("per_identity")
        row = paired_difference(scores_a, scores_b) if scores_a and scores_b else None
        if row:
            rows[f"{a} - {b}"] = row
    return rows


def paired_table(rows: dict) -> list[str]:
    if not rows:
        return []
    lines = ["Paired over the families (first minus second per family; mean +- standard error, and on how many "
             "of them the first is ahead):", "", "| difference | mean | std. error | ahead |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        sem = "-" if r["sem"] is None else f"{r['sem']:.3f}"
        lines.append(f"| {name} | {r['mean']:+.3f} | {sem} | {r['ahead']} of {r['identities']} |")
    return lines + [""]


def training_alone(collection: Path | None, hypernet: dict | None) -> dict | None:
    """Seconds per family of the families trained alone, and the hypernet's speedup against them."""
    records = [json.loads(p.read_text()) for p in sorted(collection.glob("*/collect.json"))] \
        if collection is not None and collection.is_dir() else []
    # a record with group_size was a share of a group's time, not a lone training
    seconds = [r["train_seconds"] for r in records if r.get("status") == "done" and "group_size" not in r]
    if not seconds:
        return None
    alone = {"families": len(seconds), "seconds_per_identity": sum(seconds) / len(seconds)}
    if hypernet and hypernet.get("seconds_per_identity"):
        alone["speedup"] = alone["seconds_per_identity"] / hypernet["seconds_per_identity"]
    return alone


def training_alone_lines(alone: dict | None, methods: dict) -> list[str]:
    if not alone:
        return []
    grouped = methods.get(TRAINED, {}).get("seconds_per_identity")
    hypernet = methods.get(HYPERNET, {})
    line = (f"Per-family LoRA trained alone (the collection's steps and rate, one family per step and one worker, "
            f"{alone['families']} held-out families): {alone['seconds_per_identity']:.1f} s per family")
    if "speedup" in alone:
        line += (f", so sampling the hypernet's LoRA is **{alone['speedup']:.0f}x** faster than training one new "
                 "family alone")
    if grouped and hypernet.get("speedup"):
        line += (f"; the trained row's {grouped:.3g} s is a family's share of a group trained together "
                 f"({hypernet['speedup']:.0f}x)")
    return [line + ".", ""]


def identity_scale_choice(eval_dir: Path) -> dict | None:
    """The hypernet stage's choice (run.py): the shipped scale and every candidate's validation score."""
    path = eval_dir / "identity_scale.json"
    return json.loads(path.read_text()) if path.is_file() else None


def identity_scale_lines(choice: dict | None) -> list[str]:
    if not choice:
        return []
    scores = ", ".join(f"x{k} {v:.3f}" for k, v in choice["validation_similarity"].items())
    return [f"Identity scale (decoded LoRAs moved that many times as far from the mean LoRA): "
            f"**{choice['chosen']:g}**, the best of the candidates by identity similarity on the "
            f"{choice['validation_families']} training families the dataset held out from the hypernet "
            f"(not the families above): {scores}.", ""]


def conditioning_rows(eval_dir: Path, methods: dict, config: dict) -> dict:
    """The prior's conditioning variants (evaluate stage) beside the shipped one, each hypernet's
    image score and the share of the base -> per-family gap it closes."""
    base, upper = methods.get(BASE, {}).get("mean"), methods.get(TRAINED, {}).get("mean")

    def row(numbers: dict) -> dict:
        out = {k: numbers.get(k) for k in ("mean", "sem", "seconds_per_identity")}
        if base is not None and upper is not None and upper != base and out["mean"] is not None:
            out["gap_closed"] = (out["mean"] - base) / (upper - base)
        return out

    rows = {}
    if HYPERNET in methods:
        rows[config.get("prior", {}).get("conditioning", "shipped")] = row(methods[HYPERNET])
    for path in sorted(eval_dir.glob("conditioning_*.json")):
        numbers = json.loads(path.read_text())["methods"].get(HYPERNET)
        if numbers:
            rows[path.stem.removeprefix("conditioning_")] = row(numbers)
    return rows


def conditioning_table(rows: dict) -> list[str]:
    lines = []
    for name, r in rows.items():
        gap = r.get("gap_closed")
        lines.append(f"| {name} | {r['mean']:.3f} | {(r['sem'] or 0.0):.3f} | "
                     f"{'-' if gap is None else f'{100 * gap:.0f} %'} |")
    return lines


def targets(methods: dict, paired: dict | None = None) -> dict:
    """The issue's targets, each True/False (None where a method is missing). "Beats by more than
    the standard error" is the paired difference against its own standard error where the
    per-family scores are there, else against the larger of the two methods' standard errors."""
    h = methods.get(HYPERNET)
    if h is None:
        return {}

    def beats(other: str):
        pair = (paired or {}).get(f"{HYPERNET} - {other}")
        if pair and pair["sem"] is not None:
            return bool(pair["mean"] > pair["sem"])
        o = methods.get(other)
        if o is None or h["mean"] is None or o["mean"] is None:
            return None
        margin = max(h["sem"] or 0.0, o["sem"] or 0.0)
        return bool(h["mean"] - o["mean"] > margin)

    def at_least_1000(speedup):
        return None if speedup is None else bool(speedup >= 1000)

    gap = h.get("gap_closed")
    return {"gap_closed_at_least_0.7": None if gap is None else bool(gap >= 0.7),
            "beats_nearest_by_more_than_sem": beats(NEAREST), "beats_mean_by_more_than_sem": beats(MEAN),
            "speedup_at_least_1000": at_least_1000(h.get("speedup")),
            "speedup_alone_at_least_1000": at_least_1000(h.get("speedup_alone"))}


def markdown(summary: dict, evaluation: dict, command: str) -> str:
    t = summary["targets"]
    lines = [SECTION, "",
             f"`{command}` on this 2-core CPU, one torch thread per process (load average at the end "
             f"{', '.join(map(str, summary['load_average']))}). {summary['heldout_families']} held-out families "
             "(never seen by the base model, the encoder, the collection or the hypernet); each method draws "
             f"the characters {''.join(summary['prompts'])!r} with seeds {summary['seeds']} "
             f"({summary['sampler']['steps']} {summary['sampler']['sampler']} steps, cfg {summary['sampler']['cfg']}); "
             "identity similarity = cosine between the typeface encoder's embeddings of the drawn glyphs and "
             "of the family's reference glyphs (specimen sheets of 16). Seconds per identity: making the LoRA "
             "(embedding the references included where the method needs them).", "",
             format_table(evaluation), "",
             *paired_table(summary.get("paired", {})),
             *training_alone_lines(summary.get("trained_alone"), summary["methods"]),
             "Targets: " + ", ".join(f"{k} **{v}**" for k, v in t.items()), "",
             *identity_scale_lines(summary.get("identity_scale")),
             "The prior's conditioning on the same dataset, config, budget and identity scale (AdaNorm is what "
             "ships; ADALoRA is LoRA Diffusion's, gated is its zero-initialised gate):", "",
             "| prior conditioning | identity similarity | std. error | gap closed |", "| --- | --- | --- | --- |",
             *conditioning_table(summary["conditioning"]), "",
             "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in summary["stage_seconds"].items()), "",
             "Picture: `benchmarks/miniature.png` (reference glyphs of held-out families, then what each method "
             "drew).", ""]
    return "\n".join(lines)


def replace_section(results: Path, text: str) -> None:
    """RESULTS.md with this section replaced (or appended): re-running updates, never duplicates."""
    old = results.read_text() if results.is_file() else ""
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if end < 0 else "\n" + old[end + 1:])
    write_text_atomic(results, new.rstrip("\n") + "\n")


def write_report(paths, scale, timings: dict, results_dir: Path | None,
                 command: str = "make miniature") -> dict:
    evaluation = json.loads((paths.eval / "evaluate.json").read_text())
    summary = summarize(evaluation, timings, scale, paths.eval, paths.lone / "collection")
    write_text_atomic(paths.work / "miniature.json", json.dumps(summary, indent=1) + "\n")
    print(format_table(evaluation))
    print("targets: " + json.dumps(summary["targets"]))
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results_dir / "miniature.json", json.dumps(summary, indent=1) + "\n")
        shutil.copyfile(paths.eval / "grid.png", results_dir / "miniature.png")
        replace_section(results_dir / "RESULTS.md", markdown(summary, evaluation, command))
        print(f"wrote {results_dir / 'miniature.json'}, {results_dir / 'miniature.png'} and the RESULTS.md section")
    return summary
