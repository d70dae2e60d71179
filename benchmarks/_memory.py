"""Resident memory of a process (Linux /proc), for the benchmark tables. Imports nothing heavy,
so scripts that do not need ComfyUI (bench_lora_io.py) use it without _bench."""
from __future__ import annotations

from pathlib import Path


def status_kib(field: str, pid: int | str = "self") -> int:
    """One `kB` field of /proc/PID/status, e.g. VmRSS (resident now) or VmHWM (its high-water mark)."""
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {status}")


def rss_mib(pid: int | str = "self") -> float:
    return status_kib("VmRSS", pid) / 1024


def peak_rss_mib(pid: int | str = "self") -> float:
    return status_kib("VmHWM", pid) / 1024


def reset_peak_rss() -> None:
    """Resets this process's high-water mark (VmHWM) to its current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


class PeakRss:
    """`with PeakRss() as m: ...` then m.before, m.peak and m.after (MiB) and m.extra = peak - before."""

    def __enter__(self):
        reset_peak_rss()
        self.before = rss_mib()
        return self

    def __exit__(self, *exc):
        self.peak = peak_rss_mib()
        self.after = rss_mib()
        self.extra = self.peak - self.before
