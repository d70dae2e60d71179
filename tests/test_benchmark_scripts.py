"""The benchmark scripts still run (smallest settings; the numbers are not checked here)."""
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_hypernet_benchmark_runs_its_synthetic_table_on_a_tiny_setting(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_hypernet.py"), "--only", "synthetic", "--work", str(tmp_path),
         "--train", "12", "--heldout", "4", "--layout", "tiny-attn-r4", "--config", "tiny", "--prior-steps", "5"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ada")]
    assert len(rows) == 6, result.stdout
    assert "reference-aligned" in result.stdout
