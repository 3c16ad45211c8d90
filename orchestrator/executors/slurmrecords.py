"""Records of Slurm jobs in flight, shared by every run on a cache: what lets a run re-attach.

`<cache>/slurm/inflight/<h>.json` says which job computes the node whose lock scope hashes to `h`
(core.lockscope: the key plus the values of the parameters the stage visibly reads, i.e. the
computation, whichever run or parameter set asks for it). Written after sbatch returned, removed by
whoever collects the job, and pruned when Slurm no longer holds the job. Uncached stages have no lock
scope and no record: they always run. `runs/<id>/slurm.json` lists the jobs of one run, for
`orch status`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..fsutil import atomic_write_json, read_json_object


class InflightRecords:
    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, lock_scope: str | None) -> Path | None:
        if lock_scope is None:
            return None
        return self.dir / (hashlib.sha256(lock_scope.encode()).hexdigest()[:40] + ".json")

    def read(self, path: Path | None) -> dict | None:
        return read_json_object(path) if path is not None and path.exists() else None

    def write(self, lock_scope: str | None, job_id: str, label: str, run: str | None) -> Path | None:
        path = self.path(lock_scope)
        if path is not None:
            atomic_write_json(path, {"job_id": job_id, "label": label, "run": run, "submitted": time.time()})
        return path

    def drop(self, path: Path | None, job_id: str) -> None:
        """Remove a collected job's record, unless a newer job of the same computation replaced it."""
        record = self.read(path)
        if record is not None and str(record.get("job_id")) == job_id:
            path.unlink(missing_ok=True)

    def prune(self, queued_jobs) -> None:
        """Drop the records of jobs Slurm no longer holds (their nodes are cached now, or failed). A
        record is written after sbatch returned, so a recorded job missing from the queue has ended.
        `queued_jobs` (executors.slurmctl) is called only when there are records."""
        paths = list(self.dir.glob("*.json")) if self.dir.is_dir() else []
        if not paths:
            return
        queued = queued_jobs()
        for path in paths:
            record = read_json_object(path) or {}
            if str(record.get("job_id")) not in queued:
                path.unlink(missing_ok=True)


def write_run_jobs(run_dir: Path, jobs: dict[str, str], folder: Path) -> None:
    """runs/<id>/slurm.json: node label -> job id, and where the jobs' files are."""
    atomic_write_json(Path(run_dir) / "slurm.json", {"jobs": jobs, "folder": str(folder)})
