"""`orch cache gc --keep-runs N`: the records of old runs beyond the newest N.

A run record (`runs/<id>/`: its manifest, report, node logs, metrics streams, a Slurm code snapshot)
is history for `orch runs/show/compare/get/report`, never a cache entry: deleting one never makes a
node run again. Every run adds one, and a 100,000-node run's manifest alone is ~40 MB, so a sweep
re-run every day grows the cache without bound unless its owner says how many to keep. Without the
option nothing here runs and every record stays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.status import RUN_DETACHED
from ..fsutil import read_json_object, rmtree_force
from .manifest import LATEST, MANIFEST, in_progress


@dataclass
class RunsGcReport:
    runs: int = 0  # records deleted (or that would be, dry)
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # older than the newest N but kept: "<id> (why)"
    failed: list[str] = field(default_factory=list)  # what could not be deleted, and why


def prune_runs(cache_root: Path, keep: int, dry: bool = False) -> RunsGcReport:
    """Delete the records of all runs but the newest `keep` (run ids sort by start time). A record
    is kept, whatever its age, when:

    - the run is in progress: its manifest says running and its alive.lock is held;
    - the run is detached (`--executor slurm --detach`) or its head died, and an in-flight Slurm
      record still names it: `orch status` and the next `orch run` follow it there;
    - `runs/latest` names it;
    - its manifest cannot be read: it may be one being written (kept, and said so).
    """
    report = RunsGcReport()
    runs_dir = Path(cache_root) / "runs"
    if not runs_dir.is_dir():
        return report
    run_ids = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink())
    in_flight = _named_by_slurm_records(Path(cache_root) / "slurm" / "inflight")
    latest = _latest(runs_dir)
    for run_id in run_ids[:max(0, len(run_ids) - keep)]:
        run_dir = runs_dir / run_id
        why = _why_kept(run_dir, run_id, latest, in_flight)
        if why:
            report.kept.append(f"{run_id} ({why})")
            continue
        size = _size(run_dir)
        if not dry:
            try:
                rmtree_force(run_dir, missing_ok=True)
            except OSError as e:  # a teammate's run this user may not delete: the rest goes on
                report.failed.append(f"{run_dir}: {e.strerror or e}")
                continue
        report.runs += 1
        report.bytes += size
    return report


def _why_kept(run_dir: Path, run_id: str, latest: str | None, in_flight: set[str]) -> str:
    """Why this old record must stay ("" when it may go), one check per rule of prune_runs."""
    if run_id == latest:
        return "runs/latest"
    manifest = read_json_object(run_dir / MANIFEST)
    if manifest is None:
        return "its manifest cannot be read"
    if in_progress(run_dir, manifest):
        return "in progress"
    if run_id in in_flight:
        return "Slurm jobs not collected yet" if manifest.get("status") != RUN_DETACHED else "detached, jobs in flight"
    return ""


def _named_by_slurm_records(directory: Path) -> set[str]:
    """Runs the in-flight records of `--executor slurm` name (a job's record stays until it is collected)."""
    if not directory.is_dir():
        return set()
    named = set()
    for path in directory.glob("*.json"):
        record = read_json_object(path)
        if record and record.get("run"):
            named.add(str(record["run"]))
    return named


def _latest(runs_dir: Path) -> str | None:
    """The run id `runs/latest` names (a symlink, or a plain file where links fail)."""
    path = runs_dir / LATEST
    try:
        return os.readlink(path)
    except OSError:
        pass
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
