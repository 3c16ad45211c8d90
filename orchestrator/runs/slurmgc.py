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

from dataclasses import dataclass
from pathlib import Path

from ..fsutil import read_json_object, rmtree_force
from .manifest import in_progress


@dataclass
class SlurmGcReport:
    job_folders: int = 0
    snapshots: int = 0
    kept_runs: int = 0  # runs in flight, whose snapshot and job folders were kept
    skipped: str = ""  # why nothing was touched


def gc_slurm(cache_root: Path, dry: bool = False) -> SlurmGcReport:
    from ..executors.slurmctl import SlurmUnavailableError, queued_jobs

    report = SlurmGcReport()
    jobs_dir = Path(cache_root) / "slurm" / "jobs"
    runs_dir = Path(cache_root) / "runs"
    folders = [d for d in jobs_dir.iterdir() if d.is_dir() and not d.is_symlink()] if jobs_dir.is_dir() else []
    runs = [d for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink()] if runs_dir.is_dir() else []
    snapshots = [d / "code" for d in runs if (d / "code").is_dir()]
    if not folders and not snapshots:
        return report
    try:
        queued = set(queued_jobs())
    except SlurmUnavailableError as e:
        report.skipped = f"Slurm job folders and code snapshots kept: {e}"
        return report
    keep_jobs, keep_runs = set(queued), set()
    for record in _records(Path(cache_root) / "slurm" / "inflight"):
        job = str(record.get("job_id", ""))
        keep_jobs.add(job)  # not collected yet: its folder holds the result someone may still read
        if job in queued and record.get("run"):
            keep_runs.add(str(record["run"]))
    for run in runs:
        jobs = {str(j) for j in ((read_json_object(run / "slurm.json") or {}).get("jobs") or {}).values()}
        if run.name in keep_runs or jobs & queued or in_progress(run):
            keep_runs.add(run.name)
            keep_jobs |= jobs
    report.kept_runs = sum(1 for run in runs if run.name in keep_runs and (run / "code").is_dir())
    for folder in folders:
        if folder.name not in keep_jobs:
            report.job_folders += 1
            if not dry:
                rmtree_force(folder, missing_ok=True)
    for snapshot in snapshots:
        if snapshot.parent.name not in keep_runs:
            report.snapshots += 1
            if not dry:
                rmtree_force(snapshot, missing_ok=True)
    if not dry:  # submitit's links to the submission scripts of deleted folders
        for link in jobs_dir.glob(".submission_file_*"):
            if link.is_symlink() and not link.exists():
                link.unlink(missing_ok=True)
    return report


def _records(directory: Path) -> list[dict]:
    return [r for r in (read_json_object(p) for p in directory.glob("*.json")) if r] if directory.is_dir() else []

