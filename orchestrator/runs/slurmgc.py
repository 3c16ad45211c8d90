"""`orch cache gc`, the part `--executor slurm` leaves behind: job folders (`<cache>/slurm/jobs/<job id>/`:
submitit's script, pickles and logs) and code snapshots (`runs/<id>/code/`, what a queued job imports).

Only what no run can need any more goes. A run is *in flight* while its head lives (its manifest says
running and its alive.lock is held: it may still collect a job that just ended), or while Slurm still
holds a job it lists (`runs/<id>/slurm.json`) or that an in-flight record names it for
(`<cache>/slurm/inflight/`; a detached run, or one whose head died). An in-flight run keeps its code
snapshot and the folders of all its jobs; a job Slurm still holds, or that an in-flight record names,
keeps its folder whoever submitted it. The rest is deleted: the jobs of finished runs have stored
their results in the cache (or failed), and `orch status` of such a run no longer needs their files.
Without Slurm's commands (gc from a machine that is no login node) nothing of this is touched: whether a
job is still queued cannot be known there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import read_json_object, rmtree_force
from .manifest import in_progress, run_ids


@dataclass
class SlurmGcReport:
    job_folders: int = 0
    snapshots: int = 0
    kept_runs: int = 0  # runs in flight, whose snapshot and job folders were kept
    skipped: str = ""  # why nothing was touched
    failed: list[str] = field(default_factory=list)  # what could not be deleted, and why


def gc_slurm(cache_root: Path, dry: bool = False) -> SlurmGcReport:
    """What the runs and records say is read first and Slurm's queue last: a job submitted meanwhile
    by a run that then detached is named by a record read before, so it is in the queue read after
    (or has ended). A run an uncollected record names keeps its snapshot even when the queue does not
    show the job (PrivateData=jobs hides other users' jobs; a cache shared by clusters)."""
    from ..executors.slurmctl import SlurmUnavailableError, queued_jobs

    report = SlurmGcReport()
    jobs_dir = Path(cache_root) / "slurm" / "jobs"
    runs_dir = Path(cache_root) / "runs"
    folders = [d for d in jobs_dir.iterdir() if d.is_dir() and not d.is_symlink()] if jobs_dir.is_dir() else []
    runs = [runs_dir / run_id for run_id in run_ids(runs_dir)]
    snapshots = [d / "code" for d in runs if (d / "code").is_dir()]
    if not folders and not snapshots:
        return report
    keep_jobs, keep_runs = set(), set()
    for record in inflight_records(Path(cache_root) / "slurm" / "inflight"):
        keep_jobs.add(str(record.get("job_id", "")))  # not collected yet: its folder holds the result
        if record.get("run"):
            keep_runs.add(str(record["run"]))
    run_jobs = {run.name: {str(j) for j in ((read_json_object(run / "slurm.json") or {}).get("jobs") or {}).values()}
                for run in runs}
    live = {run.name for run in runs if in_progress(run)}
    try:
        queued = set(queued_jobs())
    except SlurmUnavailableError as e:
        report.skipped = f"Slurm job folders and code snapshots kept: {e}"
        return report
    keep_jobs |= queued
    for run in runs:
        if run.name in keep_runs or run.name in live or run_jobs[run.name] & queued:
            keep_runs.add(run.name)
            keep_jobs |= run_jobs[run.name]
    report.kept_runs = sum(1 for run in runs if run.name in keep_runs and (run / "code").is_dir())
    for folder in folders:
        if folder.name not in keep_jobs and (dry or _remove(folder, report)):
            report.job_folders += 1
    for snapshot in snapshots:
        if snapshot.parent.name not in keep_runs and (dry or _remove(snapshot, report)):
            report.snapshots += 1
    if not dry:  # submitit's links to the submission scripts of deleted folders
        for link in jobs_dir.glob(".submission_file_*"):
            if link.is_symlink() and not link.exists():
                link.unlink(missing_ok=True)
    return report


def _remove(path: Path, report: SlurmGcReport) -> bool:
    """Delete, or note why not (a teammate's folder this user may not delete): gc goes on either way."""
    try:
        rmtree_force(path, missing_ok=True)
        return True
    except OSError as e:
        report.failed.append(f"{path}: {e.strerror or e}")
        return False


def inflight_records(directory: Path) -> list[dict]:
    """The readable in-flight records of `--executor slurm` (executors.slurmrecords): one per job
    submitted and not collected yet, naming its run."""
    return [r for r in (read_json_object(p) for p in directory.glob("*.json")) if r] if directory.is_dir() else []

