"""What a collect run shows: a progress bar over identities and a summary table at the end."""
from __future__ import annotations

import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class RunResult:
    out: str
    trained: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    finished_before: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed

    def summary(self, limit: int = 20) -> str:
        rows = [("trained now", len(self.trained)), ("finished by an earlier run", len(self.finished_before)),
                ("failed", len(self.failed))]
        lines = [f"{'identities':<28}{'count':>7}"] + [f"{name:<28}{count:>7}" for name, count in rows]
        if self.trained:
            seconds = [r["seconds"] for r in self.trained]
            ratios = [r["final_loss"] / r["base_loss"] for r in self.trained if r["base_loss"] > 0]
            lines.append(f"seconds per identity: median {statistics.median(seconds):.1f}, "
                         f"total {sum(seconds):.1f} (summed over workers)")
            if ratios:
                lines.append(f"final / base loss: median {statistics.median(ratios):.3f}, "
                             f"worst {max(ratios):.3f} (below 1: the LoRA fits its photos better than the base)")
        if self.failed:
            lines.append("failures by kind: " + ", ".join(f"{kind} {n}" for kind, n in
                                                          Counter(f["kind"] for f in self.failed).most_common()))
            for failure in self.failed[:limit]:
                lines.append(f"  {failure['id']}: {failure['kind']}: {failure['reason']}")
            if len(self.failed) > limit:
                lines.append(f"  ... and {len(self.failed) - limit} more (all in the run file)")
        return "\n".join(lines)


class Progress:
    """identities done / failed with tqdm's rate and ETA; each failure printed with its reason."""

    def __init__(self, total: int, finished_before: int, enabled: bool = True):
        self.done = self.failed = 0
        self.bar = tqdm(total=total, desc="collect", unit="identity", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)
        if finished_before:
            tqdm.write(f"{finished_before} identities finished by an earlier run are skipped", file=sys.stderr)

    def update(self, record: dict) -> None:
        if record["status"] == "done":
            self.done += 1
        else:
            self.failed += 1
            tqdm.write(f"failed {record['id']}: {record['kind']}: {record['reason']}", file=sys.stderr)
        self.bar.set_postfix(done=self.done, failed=self.failed, refresh=False)
        self.bar.update(1)

    def steps(self, identity: str):
        """A progress(done, total) callback drawing the identity's training steps under the main bar
        (in-process runs: a worker's steps stay in the worker)."""
        if self.bar.disable:
            return None
        bar = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=f"  {identity}", unit="step", leave=False, position=1, file=sys.stderr,
                           dynamic_ncols=True)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
        return update

    def close(self) -> None:
        self.bar.close()
