"""Soak: one ComfyUI server runs many personalizations in a row; a leak shows as a slope in its
resident memory.

One `main.py --cpu` server with this pack (tests/comfy_support.ComfyServer) and the demo's
stand-ins (tests/demo_assets.py: generated face models, a tiny hypernet trained on a synthetic
collection, the tiny SDXL-architecture checkpoint loader) runs the shipped example workflow
portrait_from_one_photo again and again: Load Image -> Face Embed -> Sample LoRA -> Decode LoRA
-> Apply LoRA -> KSampler -> VAE Decode -> Save Image. Each run takes the next of several
reference photos (each a different synthetic identity) and a new seed for Sample LoRA and the
KSampler, so every personalization node runs again, as when an artist tries one person after
another. Every --every runs the server process's resident memory (VmRSS in /proc/PID/status)
and its high-water mark (VmHWM) are read. The last line compares RSS after the last run with
RSS after the first --every runs (the first block fills ComfyUI's caches and the allocators).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soak.py [--runs 200] [--every 20] [--photos 10]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import _bench  # noqa: F401  (first: ComfyUI before the pack)
from _memory import peak_rss_mib, rss_mib

import demo_assets  # noqa: E402  (tests/, put on the path by _bench)
from comfy_support import ComfyServer  # noqa: E402
from face_models import synthetic_photo  # noqa: E402
from PIL import Image  # noqa: E402

WORKFLOW = "portrait_from_one_photo"
TARGET_GROWTH = 0.05  # RSS after the last run at most 5 % above RSS after the first block


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="personalizations, one prompt each")
    parser.add_argument("--every", type=int, default=20, help="read the server's memory after every N runs")
    parser.add_argument("--photos", type=int, default=10, help="reference photos (identities) taken in turn")
    parser.add_argument("--size", type=int, default=256, help="image width and height the KSampler draws")
    parser.add_argument("--work", type=Path, help="keep the ComfyUI base folder and the trained hypernet here "
                                                  "(reused by the next run); default: a temporary folder")
    args = parser.parse_args()
    if args.runs < 1 or args.every < 1 or args.runs % args.every:
        parser.error("--runs must be a positive multiple of --every")
    return args


def prepare_base(work: Path, photos: int) -> tuple[Path, list[str]]:
    """A ComfyUI base folder with the demo's models and `photos` reference photos in input/."""
    ckpt = work / "hypernet_training" / demo_assets.HYPERNET_FILE
    base = work / "comfy_base"
    demo_assets.install_models(base, hypernet_ckpt=ckpt if ckpt.is_file() else None, work=work / "hypernet_training")
    names = []
    for identity in range(photos):
        name = f"soak_person_{identity:03d}.png"
        photo = synthetic_photo(384, 320, [(100 + 4 * identity, 80, 140, identity)], seed=identity)
        Image.fromarray(photo).save(base / "input" / name)
        names.append(name)
    return base, names


def set_inputs(prompt: dict, class_type: str, **values) -> None:
    nodes = [node for node in prompt.values() if node["class_type"] == class_type]
    if not nodes:
        raise KeyError(f"the workflow {WORKFLOW} has no {class_type} node")
    for node in nodes:
        node["inputs"].update(values)


def personalization(template: dict, run: int, photos: list[str]) -> dict:
    """Run `run`'s prompt: the next photo and new seeds, everything else as the workflow ships."""
    prompt = copy.deepcopy(template)
    set_inputs(prompt, "LoadImage", image=photos[run % len(photos)])
    set_inputs(prompt, "LoraHypernetSample", seed=run)
    set_inputs(prompt, "KSampler", seed=run)
    return prompt


def soak(server: ComfyServer, template: dict, photos: list[str], runs: int, every: int) -> list[dict]:
    """Run the personalizations; after every `every` runs, a row of the server's memory."""
    pid = server.proc.pid
    rows = [{"run": 0, "rss": rss_mib(pid), "peak": peak_rss_mib(pid), "seconds": None}]
    seconds = []
    for run in range(1, runs + 1):
        started = time.monotonic()
        entry, _ = server.run_prompt(personalization(template, run, photos))
        seconds.append(time.monotonic() - started)
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(f"run {run} failed: {entry['status']}\n{server.log()[-4000:]}")
        if run % every == 0:
            rows.append({"run": run, "rss": rss_mib(pid), "peak": peak_rss_mib(pid),
                         "seconds": statistics.median(seconds[-every:])})
            print(f"  run {run}: RSS {rows[-1]['rss']:.0f} MiB", flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[dict], command: str, measured_on: str, load_after: str) -> None:
    _bench.heading(f"Soak: {args.runs} personalizations in one ComfyUI server (resident memory of the server "
                   "process, MiB)", command, measured_on)
    print(f"Workflow example_workflows/{WORKFLOW}.json on the tiny SDXL-architecture model ({args.size} px, "
          f"its shipped steps), {args.photos} reference photos in turn, a new seed every run. Load average "
          f"(1, 5, 15 min) after the last run: {load_after} (before: in the machine line).\n")
    first = rows[1]["rss"]
    _bench.table(("after run", "RSS MiB", f"change since run {args.every} MiB", "peak RSS (VmHWM) MiB",
                  "seconds per run (median of the block)"),
                 [(row["run"], f"{row['rss']:.0f}", "" if row["run"] < args.every else f"{row['rss'] - first:+.0f}",
                   f"{row['peak']:.0f}", "" if row["seconds"] is None else f"{row['seconds']:.2f}") for row in rows])
    ratio = rows[-1]["rss"] / first
    verdict = "met" if ratio <= 1 + TARGET_GROWTH else "missed"
    print(f"RSS after run {args.runs} / after run {args.every}: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %); "
          f"target within {TARGET_GROWTH:.0%}: **{verdict}**.\n", flush=True)


def main() -> None:
    args = parse_args()
    command = _bench.command_line()
    if os.environ.get("OMP_NUM_THREADS"):  # it changes every number: part of the command
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        work = args.work or Path(tmp)
        base, photos = prepare_base(work, args.photos)
        with ComfyServer(base, fixture_nodes=True) as server:
            template = demo_assets.example_prompt(WORKFLOW, server.get("/object_info"), args.size)
            measured_on = _bench.machine()  # commit and load as the runs start
            rows = soak(server, template, photos, args.runs, args.every)
            load_after = _bench.load_average()
    report(args, rows, command, measured_on, load_after)


if __name__ == "__main__":
    main()
