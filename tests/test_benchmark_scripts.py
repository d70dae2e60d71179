"""The benchmark scripts still run (smallest settings; the numbers are not checked here)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_hypernet_tiny(work, *args):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_hypernet.py"), "--only", "synthetic", "--work", str(work),
         "--train", "12", "--heldout", "4", "--layout", "tiny-attn-r4", "--config", "tiny", "--prior-steps", "5", *args],
        capture_output=True, text=True, timeout=600)


def test_hypernet_benchmark_runs_its_synthetic_table_on_a_tiny_setting(tmp_path):
    result = _bench_hypernet_tiny(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ada")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| adanorm-x0", "| adanorm-v", "| adanorm-eps", "| adalora-x0", "| adalora-v", "| adalora-eps"]
    assert "reference-aligned" in result.stdout

    # A second run reuses the cached autoencoder and trains only the variant asked for: the gated ADALoRA.
    gated = _bench_hypernet_tiny(tmp_path, "--variants", "adalora+gate-x0")
    assert gated.returncode == 0, gated.stderr[-3000:]
    assert [line.split(" | ")[0] for line in gated.stdout.splitlines() if line.startswith("| ada")] == ["| adalora+gate-x0"]
    from hypernet.model.checkpoint import load_hypernet
    assert load_hypernet(tmp_path / "adalora+gate-x0.safetensors").config.prior.adalora_gate
    assert not load_hypernet(tmp_path / "adalora-x0.safetensors").config.prior.adalora_gate

    unknown = _bench_hypernet_tiny(tmp_path, "--variants", "adanorm-x1")
    assert unknown.returncode == 2 and "unknown variants" in unknown.stderr


def _run_all(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny ops: one thread is fastest, and steady on a busy CPU
    return subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--results", str(tmp_path / "RESULTS.md"),
                           *args], capture_output=True, text=True, timeout=600, env=env)


# script -> text its table must contain
SPEED_TABLES = {
    "bench_personalize.py": "photo -> patched MODEL, excluding face",
    "bench_apply.py": "ratio ours / stock",
    "bench_memory.py": "free path 2, free_memory (node outputs dropped): hypernet freed, face analyzer freed",
    "bench_train.py": "| autoencoder |",
    "bench_scaling.py": "sample 25 steps",
}


@pytest.mark.parametrize("script", list(SPEED_TABLES))
def test_speed_benchmark_runs_at_its_smallest_setting_and_writes_its_results_section(tmp_path, script):
    (tmp_path / "RESULTS.md").write_text("# Measured results\n\nKept as it is.\n")
    result = _run_all(tmp_path, "--only", script)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert SPEED_TABLES[script] in result.stdout
    written = (tmp_path / "RESULTS.md").read_text()
    assert written.startswith("# Measured results\n\nKept as it is.\n")
    assert SPEED_TABLES[script] in written and "Machine: " in written and "Command: `" in written
    if script == "bench_scaling.py":
        assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![Latency vs layout size and steps](scaling.png)" in written


def test_results_section_is_replaced_in_place_and_the_rest_of_the_file_kept():
    sys.path.insert(0, str(BENCHMARKS))
    import run_all
    original = "# Results\n\n## Issue 4\n\ntable\n"
    once = run_all.replace_section(original, "## Speed\n\nfirst")
    assert once.startswith(original) and "first" in once
    twice = run_all.replace_section(once + "\n## Later section\n", "## Speed\n\nsecond")
    assert "first" not in twice and "second" in twice
    assert twice.startswith(original) and twice.rstrip().endswith("## Later section")
    assert twice.count(run_all.BEGIN) == 1 and twice.count(run_all.END) == 1


def test_soak_benchmark_prints_the_server_memory_every_few_runs_and_the_ratio(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_soak.py"), "--runs", "4", "--every", "2",
                             "--photos", "3", "--work", str(tmp_path)], capture_output=True, text=True, timeout=900,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| after run |"))
    rows = [line.strip("|").split("|") for line in lines[header + 2:header + 5]]
    assert [int(row[0]) for row in rows] == [0, 2, 4] and lines[header + 5] == ""
    rss = [float(row[1]) for row in rows]
    assert all(value > 100 for value in rss), rss  # a ComfyUI server holds far more than 100 MiB
    assert rows[1][2].strip() == "+0" and abs(float(rows[2][2]) - (rss[2] - rss[1])) <= 1  # rounded separately
    assert "RSS after run 4 / after run 2: " in result.stdout and "target within 5%" in result.stdout
    assert "; load average " in result.stdout and "Load average (1, 5, 15 min) after the last run: " in result.stdout
    assert len(list((tmp_path / "comfy_base" / "output").rglob("*.png"))) == 4  # every run drew its image


def test_glyph_step_benchmark_prints_both_glyph_sizes():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_glyph_step.py"), "--steps", "1", "--batch", "2"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ") and "x" in line[:6]] \
        == ["| 16x16", "| 32x32"]
