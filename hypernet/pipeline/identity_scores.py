"""Image-level identity scores (evaluate-images): how much generated images look like the
identity's reference images, by the embedding model that plays ArcFace.

An identity's score is the mean cosine between every generated image's embedding and every
reference image's embedding (LoRA Diffusion's and DiffLoRA's "Face Sim"). A method's score is
the mean over identities with its standard error (the spread of identities, not of images:
identities are the samples the claim is about). The calibration row scores each reference
against the *other* references of its identity: two real photos of one person reach only about
0.46 ArcFace similarity, so a method far above its calibration row copies the references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..common.tensors import l2_normalize
from ..errors import HypernetError

CALIBRATION = "same identity, other reference"
BASE, UPPER_BOUND = "base", "trained"


def _rows(embeddings, what: str) -> torch.Tensor:
    rows = torch.as_tensor(embeddings, dtype=torch.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise HypernetError(f"{what} must be a non-empty [n, d] batch of embeddings, not shape {tuple(rows.shape)}")
    return l2_normalize(rows, what)


def identity_similarity(generated, references) -> float:
    """Mean cosine over all (generated image, reference image) pairs."""
    gen, ref = _rows(generated, "generated embeddings"), _rows(references, "reference embeddings")
    if gen.shape[1] != ref.shape[1]:
        raise HypernetError(f"generated embeddings have {gen.shape[1]} values, references {ref.shape[1]}: "
                            "embed both with the same model")
    return float((gen @ ref.T).mean())


def reference_calibration(references) -> float | None:
    """Mean cosine over pairs of *different* references of one identity; None with one reference."""
    ref = _rows(references, "reference embeddings")
    n = ref.shape[0]
    if n < 2:
        return None
    cos = ref @ ref.T
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


@dataclass
class MethodScores:
    """One row of the table: per-identity scores and the seconds each identity's LoRA took."""

    name: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # identity -> where its LoRA came from, if not made here

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)

    @property
    def sem(self) -> float | None:
        """Standard error of the mean over identities (sample standard deviation / sqrt(n))."""
        n = len(self.scores)
        if n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((s - mean) ** 2 for s in self.scores.values()) / (n - 1) / n)

    @property
    def seconds_per_identity(self) -> float | None:
        known = [s for s in self.seconds.values() if s is not None]
        return sum(known) / len(known) if known and len(known) == len(self.seconds) else None


def gap_closed(method: MethodScores, base: MethodScores | None, upper: MethodScores | None) -> float | None:
    """(method - base) / (upper - base), over the mean scores; None without both ends or with no gap."""
    if base is None or upper is None:
        return None
    gap = upper.mean - base.mean
    if abs(gap) < 1e-12:
        return None
    return (method.mean - base.mean) / gap


def report(methods: list[MethodScores], calibration: MethodScores | None, gap_methods: tuple[str, ...]) -> dict:
    """The numbers as JSON: per method its mean, standard error, seconds per identity and
    per-identity scores, gap_closed for `gap_methods`, the calibration row."""
    by_name = {m.name: m for m in methods}
    base, upper = by_name.get(BASE), by_name.get(UPPER_BOUND)
    out = {}
    for m in methods:
        row = {"mean": m.mean, "sem": m.sem, "seconds_per_identity": m.seconds_per_identity,
               "per_identity": dict(m.scores)}
        if m.notes:
            row["sources"] = dict(m.notes)
        if m.name in gap_methods:
            row["gap_closed"] = gap_closed(m, base, upper)
            if upper is not None and upper.seconds_per_identity and m.seconds_per_identity:
                row["speedup"] = upper.seconds_per_identity / m.seconds_per_identity
        out[m.name] = row
    result = {"methods": out}
    if calibration is not None and calibration.scores:
        result["calibration"] = {"name": CALIBRATION, "mean": calibration.mean, "sem": calibration.sem,
                                 "per_identity": dict(calibration.scores)}
    return result


def paired_difference(first: dict[str, float], second: dict[str, float]) -> dict | None:
    """First method's per-identity scores minus the second's over the identities both scored: mean,
    standard error and how many the first is ahead on. Every method draws the same identities with
    the same prompts and seeds, so the spread between identities cancels here; the methods'
    own standard errors keep it and are far too wide to compare two methods with."""
    common = sorted(set(first) & set(second))
    if not common:
        return None
    diff = MethodScores("difference", {k: first[k] - second[k] for k in common})
    return {"mean": diff.mean, "sem": diff.sem, "ahead": sum(d > 0 for d in diff.scores.values()),
            "identities": len(common)}


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}"


def format_table(numbers: dict) -> str:
    """The report as a Markdown table (RESULTS.md takes it as it is)."""
    lines = ["| method | identity similarity | std. error | seconds / identity | gap closed |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in numbers["methods"].items():
        gap = row.get("gap_closed")
        lines.append(f"| {name} | {_number(row['mean'])} | {_number(row['sem'])} | "
                     f"{_seconds(row['seconds_per_identity'])} | {'-' if gap is None else f'{100 * gap:.0f} %'} |")
    calibration = numbers.get("calibration")
    if calibration:
        lines.append(f"| *{calibration['name']}* | {_number(calibration['mean'])} | {_number(calibration['sem'])} "
                     "| - | - |")
    return "\n".join(lines)
