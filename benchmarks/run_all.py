"""`make bench`: runs every speed and memory benchmark, prints their tables, draws the scaling
plot and writes the tables into benchmarks/RESULTS.md (its issue-6 section, between two markers;
the rest of the file is left as it is).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only bench_apply.py ...] [--results FILE | --no-write]

Each script runs in its own process, so the peak memory it reports is its own. --quick runs
every script at its smallest setting (seconds, not minutes; what the smoke test runs): its
numbers mean nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN = "<!-- begin issue-6 benchmarks: written by `make bench` (benchmarks/run_all.py); edits here are overwritten -->"
END = "<!-- end issue-6 benchmarks -->"

# script -> (arguments of the full run, arguments of the smallest run)
SUITE: dict[str, tuple[list[str], list[str]]] = {
    "bench_personalize.py": ([], ["--layouts", "tiny-attn-r4", "--runs", "1", "--steps", "2", "3"]),
    "bench_apply.py": ([], ["--layout", "tiny-attn-r4", "--runs", "1", "--patch-runs", "1"]),
    "bench_memory.py": ([], ["--layout", "tiny-attn-r4", "--runs", "1", "--steps", "2"]),
    "bench_train.py": ([], ["--layout", "tiny-attn-r4", "--preset", "tiny", "--ae-steps", "1", "--prior-steps", "1",
                            "--identities", "4"]),
    "bench_scaling.py": ([], ["--smoke", "--preset", "tiny", "--runs", "1", "--steps", "2", "3"]),
}


def run_script(script: str, args: list[str]) -> tuple[int, str]:
    """Run one benchmark, echoing its output as it comes; returns (exit code, its stdout)."""
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)


def tables_only(output: str) -> str:
    """A script's report without its progress lines: everything from its first heading on."""
    start = output.find("### ")
    return output[start:].strip() if start >= 0 else output.strip()


def replace_section(text: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with the part between the markers `begin` and `end` replaced by `section` (appended
    when absent); other scripts' sections use their own markers."""
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text.split(begin, 1)[1]:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        return before + block + after
    return text.rstrip("\n") + "\n\n" + block + "\n"


def section(command: str, reports: dict[str, str], failed: list[str], minutes: float, load_before: str,
            png: str | None) -> str:
    lines = ["## Speed and memory (issue 6)", "",
             f"Written by `{command}` in {minutes:.1f} min. Load average before the run: {load_before} "
             "(the CPU is shared: compare numbers only from the same run). Every table names its own "
             "command, machine and commit; medians with (min-max) over repeated runs.", ""]
    if failed:
        lines += [f"**Failed: {', '.join(failed)}** (see the console output of the run).", ""]
    for script, report in reports.items():
        lines += [report, ""]
    if png:
        lines += [f"![Latency vs layout size and steps]({png})", ""]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest settings: checks the scripts run, nothing more")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), help="run these scripts only")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    return parser.parse_args()


def command_text(args: argparse.Namespace) -> str:
    """The command as RESULTS.md shows it: `make bench`, or the script with its flags."""
    command = "make bench" if not (args.quick or args.only) else " ".join(
        [".venv/bin/python benchmarks/run_all.py", *sys.argv[1:]])
    if os.environ.get("OMP_NUM_THREADS"):  # it changes every number: part of the command
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    return command


def run_suite(args: argparse.Namespace) -> tuple[dict[str, str], list[str], str | None]:
    """Every script in turn: (tables per script that ran, scripts that failed, the plot's path
    relative to the results file, or None)."""
    reports, failed, png = {}, [], None
    for script in args.only or SUITE:
        full, quick = SUITE[script]
        script_args = list(quick if args.quick else full)
        if script == "bench_scaling.py":
            target = HERE / "scaling.png" if not args.quick else args.results.parent / "scaling.png"
            script_args += ["--png", os.path.relpath(target, ROOT)]  # the scripts run in ROOT
            png = os.path.relpath(target, args.results.parent)
        print(f"\n==> {script} {' '.join(script_args)}", flush=True)
        code, output = run_script(script, script_args)
        if code != 0:
            failed.append(script)
            if script == "bench_scaling.py":
                png = None
            continue
        reports[script] = tables_only(output)
    return reports, failed, png


def main() -> int:
    args = parse_args()
    command = command_text(args)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    reports, failed, png = run_suite(args)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nAll benchmarks: {minutes:.1f} min" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    if not args.no_write:
        text = args.results.read_text() if args.results.is_file() else "# Measured results\n"
        args.results.write_text(replace_section(text, section(command, reports, failed, minutes, load_before, png)))
        print(f"Wrote the tables into {args.results}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
