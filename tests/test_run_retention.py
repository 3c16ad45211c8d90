"""`orch cache gc --keep-runs N` (runs.retention): old run records go, the newest N and any a run or
Slurm job still needs stay, and nothing re-runs for it."""

from __future__ import annotations

import fcntl
import json
import os

from conftest import pipeline


def _runs(project) -> list[str]:
    runs = project.root / ".orch" / "runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.is_symlink())


def _four_runs(project) -> list[str]:
    pipeline(project)
    for _ in range(4):
        project.orch("run", "experiment.py", "-p", "params/base.yaml")
    runs = _runs(project)
    assert len(runs) == 4
    return runs


def test_keep_runs_deletes_the_records_of_older_runs_and_nothing_reruns(project):
    runs = _four_runs(project)
    dry = project.orch("cache", "gc", "--keep-runs", "2", "--dry")
    assert "would delete 2 run record(s) older than the newest 2" in dry.stdout, dry.stdout
    assert _runs(project) == runs  # --dry deletes nothing
    proc = project.orch("cache", "gc", "--keep-runs", "2")
    assert "deleted 2 run record(s) older than the newest 2" in proc.stdout, proc.stdout
    assert _runs(project) == runs[2:]
    listed = project.orch("runs").stdout
    assert runs[3] in listed and runs[2] in listed and runs[0] not in listed
    gone = project.orch("show", runs[0], check=False)
    assert gone.returncode != 0 and f"no run {runs[0]!r}" in gone.stderr and "Traceback" not in gone.stderr
    project.reset_counts()
    project.orch("run", "experiment.py", "-p", "params/base.yaml")
    assert project.counts() == {}  # run records are history, not entries: everything is still cached
    assert project.orch("show").returncode == 0


def test_without_keep_runs_gc_keeps_every_run_record(project):
    runs = _four_runs(project)
    proc = project.orch("cache", "gc", "--grace", "0")
    assert "run record" not in proc.stdout
    assert _runs(project) == runs


def test_runs_in_progress_detached_or_latest_are_kept_whatever_their_age(project):
    """An old run still running (its alive.lock held), a detached one a Slurm job record names, and
    the one runs/latest names stay even with --keep-runs 0; a run whose head died without Slurm jobs
    goes like any other."""
    runs = _four_runs(project)
    cache = project.root / ".orch"
    alive, detached, died, done = runs[0], runs[1], runs[2], runs[3]
    for run, status in ((alive, "running"), (detached, "detached"), (died, "running")):
        path = cache / "runs" / run / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": status}))
    (cache / "slurm" / "inflight").mkdir(parents=True)
    (cache / "slurm" / "inflight" / "a1.json").write_text(json.dumps({"job_id": "99", "label": "s[p]", "run": detached}))
    fd = os.open(cache / "runs" / alive / "alive.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live `orch run` holds
        proc = project.orch("cache", "gc", "--keep-runs", "0")
    finally:
        os.close(fd)
    assert "deleted 1 run record(s) older than the newest 0" in proc.stdout, proc.stdout
    assert _runs(project) == [alive, detached, done]
    assert f"kept run {alive} (in progress)" in proc.stderr
    assert f"kept run {detached} (detached, jobs in flight)" in proc.stderr
    assert f"kept run {done} (runs/latest)" in proc.stderr


def test_a_run_record_with_an_unreadable_manifest_is_kept_and_said_so(project):
    runs = _four_runs(project)
    (project.root / ".orch" / "runs" / runs[0] / "manifest.json").write_text("{half")
    proc = project.orch("cache", "gc", "--keep-runs", "1")
    assert _runs(project) == [runs[0], runs[3]]
    assert f"kept run {runs[0]} (its manifest cannot be read)" in proc.stderr


def test_keep_runs_must_be_a_count(project):
    _four_runs(project)
    proc = project.orch("cache", "gc", "--keep-runs", "-1", check=False)
    assert proc.returncode == 2 and "--keep-runs" in proc.stderr and "Traceback" not in proc.stderr
