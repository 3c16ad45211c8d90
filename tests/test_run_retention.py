"""`orch cache gc --keep-runs N` (runs.retention): old run records go, the newest N and any a run or
Slurm job still needs stay, and nothing re-runs for it."""

from __future__ import annotations

import fcntl
import json
import os
import time

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
    assert "would delete 2 run record(s) (" in dry.stdout and "kept the newest 2\n" in dry.stdout, dry.stdout
    assert _runs(project) == runs  # --dry deletes nothing
    proc = project.orch("cache", "gc", "--keep-runs", "2")
    assert "deleted 2 run record(s) (" in proc.stdout and "kept the newest 2\n" in proc.stdout, proc.stdout
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


def test_runs_in_progress_with_slurm_jobs_or_latest_are_kept_whatever_their_age(project):
    """With --keep-runs 0: an old run still running (its alive.lock held), a detached one and one whose
    head died that Slurm job records name, one whose code snapshot a queued job may import, and the one
    runs/latest names all stay; a run whose head died without Slurm jobs goes like any other."""
    pipeline(project)
    for _ in range(6):
        project.orch("run", "experiment.py", "-p", "params/base.yaml")
    runs = _runs(project)
    cache = project.root / ".orch"
    alive, detached, orphaned, snapshot, died, done = runs
    for run, status in ((alive, "running"), (detached, "detached"), (orphaned, "running"), (died, "running")):
        path = cache / "runs" / run / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": status}))
    (cache / "slurm" / "inflight").mkdir(parents=True)
    for job, run in (("98", detached), ("99", orphaned)):
        (cache / "slurm" / "inflight" / f"a{job}.json").write_text(json.dumps({"job_id": job, "label": "s[p]", "run": run}))
    (cache / "runs" / snapshot / "code" / "0").mkdir(parents=True)
    fd = os.open(cache / "runs" / alive / "alive.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live `orch run` holds
        from orchestrator.runs.retention import prune_runs  # (gc_slurm would drop the snapshot: no queue here)

        report = prune_runs(cache, 0)
    finally:
        os.close(fd)
    assert report.runs == 1 and not report.failed
    assert _runs(project) == [alive, detached, orphaned, snapshot, done]
    assert report.kept == [f"{alive} (in progress)", f"{detached} (detached, Slurm jobs in flight)",
                           f"{orphaned} (Slurm jobs not collected yet)",
                           f"{snapshot} (its Slurm jobs may still import its code snapshot)", f"{done} (runs/latest)"]


def test_the_cli_says_which_runs_it_kept_and_why(project):
    runs = _four_runs(project)
    proc = project.orch("cache", "gc", "--keep-runs", "0")
    assert "deleted 3 run record(s) (" in proc.stdout and "kept the newest 0 and 1 older one(s) still needed" in proc.stdout
    assert f"note: kept run {runs[3]} (runs/latest)" in proc.stderr
    assert _runs(project) == [runs[3]]


def test_a_run_record_with_an_unreadable_manifest_is_kept_for_a_day(project):
    runs = _four_runs(project)
    young, old = runs[0], runs[1]
    for run in (young, old):
        (project.root / ".orch" / "runs" / run / "manifest.json").write_text("{half")
    past = time.time() - 2 * 86400
    for path in sorted((project.root / ".orch" / "runs" / old).rglob("*")) + [project.root / ".orch" / "runs" / old]:
        os.utime(path, (past, past))
    proc = project.orch("cache", "gc", "--keep-runs", "1")
    assert _runs(project) == [young, runs[3]]
    assert f"note: kept run {young} (its manifest cannot be read; written to within a day)" in proc.stderr


def test_a_deletion_stopped_halfway_is_finished_by_the_next_gc(project):
    runs = _four_runs(project)
    leftover = project.root / ".orch" / "runs" / f".deleting-{runs[0]}"
    (project.root / ".orch" / "runs" / runs[0]).rename(leftover)  # as if gc was killed after the rename
    assert runs[0] not in project.orch("runs").stdout  # not a run any more
    project.orch("cache", "gc", "--keep-runs", "10")
    assert not leftover.exists() and _runs(project) == runs[1:]


def test_keep_runs_must_be_a_count(project):
    _four_runs(project)
    proc = project.orch("cache", "gc", "--keep-runs", "-1", check=False)
    assert proc.returncode == 2 and "--keep-runs" in proc.stderr and "Traceback" not in proc.stderr


def test_a_latest_that_is_a_hand_made_absolute_link_still_protects_its_run(project):
    runs = _four_runs(project)
    latest = project.root / ".orch" / "runs" / "latest"
    latest.unlink()
    latest.symlink_to(project.root / ".orch" / "runs" / runs[1])
    project.orch("cache", "gc", "--keep-runs", "0")
    assert _runs(project) == [runs[1]]
