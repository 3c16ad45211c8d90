"""`orch cache gc --keep-runs N`: the records of old runs beyond the newest N.

A run record (`runs/<id>/`: its manifest, report, node logs, metrics streams, a Slurm code snapshot)
is history for `orch runs/show/compare/get/report`, never a cache entry: deleting one never makes a
node run again. Every run adds one, and a 100,000-node run's manifest alone is ~40 MB, so a sweep
re-run every day grows the cache without bound unless its owner says how many to keep. Without the
option nothing here runs and every record stays.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.status import RUN_DETACHED
from ..fsutil import rmtree_force
from ..store.maintenance import newest_mtime
from .manifest import LATEST, MANIFEST, alive_lock_held, in_progress, run_ids
from .manifesthead import read_header
from .slurmgc import inflight_records

#: A run directory whose manifest cannot be read is kept this long (seconds since anything in it was
#: written): at its very start a run may not have written it yet. Older, it is a crash's leftover.
UNREADABLE_AGE_S = 86400.0
#: Where a record goes first, so that a deletion stopped halfway leaves no half record behind as a run.
DELETING = ".deleting-"


@dataclass
class RunsGcReport:
    runs: int = 0  # records deleted (or that would be, dry)
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # older than the newest N but kept: "<id> (why)"
    failed: list[str] = field(default_factory=list)  # what could not be deleted, and why


def prune_runs(cache_root: Path, keep: int, dry: bool = False) -> RunsGcReport:
    """Delete the records of all runs but the newest `keep`, in the order `orch runs` lists them (by
    run id, i.e. start time), and the remains of deletions stopped halfway. A record is kept, whatever
    its age, when:

    - `runs/latest` names it;
    - the run is in progress: its manifest says running and its alive.lock is held;
    - its code snapshot (`runs/<id>/code/`) is still there: a queued Slurm job may import it.
      runs.slurmgc deletes it once none can (run that first, as `orch cache gc` does);
    - an in-flight Slurm record names the run (a job not collected yet: a detached run, one whose
      head died);
    - its manifest cannot be read and it was written to within a day or its alive.lock is held.
    """
    report = RunsGcReport()
    runs_dir = Path(cache_root) / "runs"
    ids = run_ids(runs_dir)
    in_flight = {str(r["run"]) for r in inflight_records(Path(cache_root) / "slurm" / "inflight") if r.get("run")}
    now = time.time()
    for run_id in ids[:max(0, len(ids) - keep)]:
        run_dir = runs_dir / run_id
        try:  # runs/latest read for each: a run may end (and take it) while gc goes through the others
            why = _why_kept(run_dir, run_id, _latest(runs_dir), in_flight, now)
        except FileNotFoundError:  # another gc took it meanwhile
            continue
        if why:
            report.kept.append(f"{run_id} ({why})")
            continue
        size = _size(run_dir)
        if not dry and not _delete(run_dir, runs_dir / f"{DELETING}{run_id}", report):
            continue
        report.runs += 1
        report.bytes += size
    if not dry:
        for leftover in runs_dir.glob(f"{DELETING}*") if runs_dir.is_dir() else ():
            _delete(leftover, leftover, report)
    return report


def _why_kept(run_dir: Path, run_id: str, latest: str | None, in_flight: set[str], now: float) -> str:
    """Why this old record must stay ("" when it may go), one guard per rule of prune_runs."""
    if run_id == latest:
        return "runs/latest"
    manifest = read_header(run_dir / MANIFEST, wanted=("status",))  # (fast for orch 0.2's layout too)
    if manifest is None:
        if alive_lock_held(run_dir):
            return "its manifest cannot be read and its alive.lock is held"
        if now - newest_mtime(run_dir) < UNREADABLE_AGE_S:
            return "its manifest cannot be read; written to within a day"
        return ""
    if in_progress(run_dir, manifest):
        return "in progress"
    if (run_dir / "code").is_dir():
        return "its Slurm jobs may still import its code snapshot"
    if run_id in in_flight:
        return "detached, Slurm jobs in flight" if manifest.get("status") == RUN_DETACHED else "Slurm jobs not collected yet"
    return ""


def _delete(run_dir: Path, hidden: Path, report: RunsGcReport) -> bool:
    """Rename the record out of the runs list, then delete it: stopped halfway, it is a hidden
    leftover the next gc finishes, never a run with half its files."""
    try:
        if hidden != run_dir:
            os.rename(run_dir, hidden)
        rmtree_force(hidden, missing_ok=True)
        return True
    except OSError as e:  # a teammate's run this user may not delete: the rest goes on
        report.failed.append(f"{run_dir}: {e.strerror or e}")
        return False


def _latest(runs_dir: Path) -> str | None:
    """The run id `runs/latest` names (a symlink, or a plain file where links fail)."""
    path = runs_dir / LATEST
    try:
        return os.path.basename(os.path.normpath(os.readlink(path)))  # (a hand-made absolute link too)
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
