"""benchmarks/bench_condition.py still runs (smallest settings; the numbers are not checked here)."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_condition.py"


def test_condition_benchmark_prints_one_row_per_scenario_and_variant(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path), "--identities", "12", "--heldout", "0.25",
         "--modules", "2", "--global-dim", "8", "--ae-steps", "3", "--prior-steps", "3", "--seeds", "1",
         "--steps", "2", "--variants", "face/mlp,face+global/transformer"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| face")]
    assert [(r[0], r[1], r[2]) for r in rows] == [("| face+global", "face", "mlp"),
                                                  ("| face+global", "face+global", "transformer"),
                                                  ("| face", "face", "mlp"), ("| face", "face+global", "transformer")]
