"""Cache housekeeping (stats, verify, gc) on both store implementations."""

from __future__ import annotations

import json
import os
import time

from orchestrator.store import DiskStore, Entry, KeyComponents, StoredOutput
from orchestrator.store.maintenance import gc, stats, verify

KEY = "ab" + "0" * 62


def _object(store, tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return store.ingest(p, ".bin")


def _entry(info, trace="t", stage="m:s", key=KEY):
    return Entry(key=key, trace_id=trace, stage=stage, param_set="default", created=time.time(),
                 components=KeyComponents(stage, None, "c" * 64, "d" * 64, {}), reads={}, files={},
                 outputs={"out": StoredOutput(info, ("x:Y", None))})


def test_stats_count_entries_objects_and_bytes(store, tmp_path):
    a = _object(store, tmp_path, "a", b"a" * 10)
    _object(store, tmp_path, "b", b"b" * 5)
    store.put_entry(_entry(a))
    s = stats(store)
    assert (s.entries, s.nodes, s.objects, s.bytes) == (1, 1, 2, 15)
    assert s.by_stage == {"m:s": [1, 10]}


def test_gc_removes_only_unreferenced_objects(store, tmp_path):
    keep = _object(store, tmp_path, "a", b"keep")
    drop = _object(store, tmp_path, "b", b"drop me")
    store.put_entry(_entry(keep))
    assert gc(store, grace_s=3600).objects == 0  # too young: a run may be about to reference it
    report = gc(store, grace_s=0, dry=True)
    assert report.objects == 1 and store.has_object(drop)
    report = gc(store, grace_s=0)
    assert (report.objects, report.bytes) == (1, 7)
    assert store.has_object(keep) and not store.has_object(drop)


def test_gc_removes_old_staging_leftovers_only(tmp_path):
    store = DiskStore(tmp_path / "cache")
    old, new = store.new_staging_dir("old"), store.new_staging_dir("new")
    (old / "f").write_text("x")
    (new / "f").write_text("x")
    past = time.time() - 3 * 86400
    os.utime(old / "f", (past, past))
    os.utime(old, (past, past))
    os.utime(new, (past, past))  # an old directory with a file written just now: still in use
    assert gc(store).staging == 1
    assert not old.exists() and new.exists()


def test_gc_removes_old_leftovers_of_killed_entry_index_writes_only(tmp_path):
    store = DiskStore(tmp_path / "cache")
    index = tmp_path / "cache" / "index"
    index.mkdir(parents=True)
    past = time.time() - 3 * 86400
    for name in ("a.idx", "a.idx.123.beef.tmp", "b.idx.124.cafe.tmp"):
        (index / name).write_bytes(b"x")
        os.utime(index / name, (past, past))
    os.utime(index / "b.idx.124.cafe.tmp")  # being written now
    assert gc(store).staging == 1
    assert sorted(p.name for p in index.iterdir()) == ["a.idx", "b.idx.124.cafe.tmp"]


def test_gc_keeps_recent_checkpoint_directories_of_failed_stages(tmp_path):
    store = DiskStore(tmp_path / "cache")
    recent, stale = store.checkpoint_dir("a" * 32), store.checkpoint_dir("b" * 32)
    for d in (recent, stale):
        d.mkdir(parents=True)
        (d / "epoch-3.pt").write_text("x")
    past = time.time() - 8 * 86400
    os.utime(stale / "epoch-3.pt", (past, past))
    os.utime(stale, (past, past))
    report = gc(store)
    assert report.checkpoint_dirs == 1 and recent.exists() and not stale.exists()


def test_verify_finds_damage_and_drops_its_entries(tmp_path):
    store = DiskStore(tmp_path / "cache")
    good = _object(store, tmp_path, "a", b"good data")
    bad = _object(store, tmp_path, "b", b"bad data!")
    store.put_entry(_entry(good, "t1"))
    store.put_entry(_entry(bad, "t2"))
    path = store.object_path(bad, verify=False)
    os.chmod(path, 0o644)
    path.write_bytes(b"BAD data!")  # same size: only a re-hash finds it
    report = verify(store)
    assert report.checked == 2 and len(report.damaged) == 1 and bad.hash in report.damaged[0]
    assert report.dropped_entries == 1
    assert [e.trace_id for e in store.get_entries(KEY)] == ["t1"]
    assert not store.has_object(bad)  # quarantined: its producer re-runs


def test_gc_prunes_old_lock_files_of_computed_nodes_only(tmp_path):
    """Lock files of their own nodes have where the kernel has no byte locks (and had before orch 0.2);
    the one file whose bytes are node locks elsewhere is never pruned."""
    nodes_file = tmp_path / "cache" / "locks" / "nodes.lock"
    DiskStore(tmp_path / "cache").check_locking()
    store = DiskStore(tmp_path / "cache")
    store._lock_kind = "flock"
    done, pending, held = "ab" + "1" * 62, "ab" + "2" * 62, "ab" + "3" * 62
    info = _object(store, tmp_path, "a", b"x")
    store.put_entry(_entry(info, key=done))
    store.put_entry(_entry(info, key=held))
    for key in (done, pending, held):
        lock = store.lock(key)
        lock.acquire()
        lock.release()
    holder = store.lock(held)
    holder.acquire()
    try:
        files = {p.name.split(".")[0]: p for p in (tmp_path / "cache" / "locks").glob("*/*.lock")}
        past = time.time() - 3 * 86400
        for p in (*files.values(), nodes_file):
            os.utime(p, (past, past))
        assert gc(store, grace_s=0).locks == 1
        assert not files[done].exists() and files[pending].exists() and files[held].exists()
        assert nodes_file.exists()
    finally:
        holder.release()
    lock = store.lock(done)  # a pruned lock file is simply made again
    assert lock.acquire(timeout=1)
    lock.release()


def test_gc_keeps_slurm_leftovers_where_slurm_cannot_say_what_is_queued(project):
    """From a machine without Slurm's commands, a queued job cannot be told from a finished one: its
    job folder and the code snapshot it imports are kept, and gc says why."""
    cache = project.root / ".orch"
    (cache / "slurm" / "jobs" / "4711").mkdir(parents=True)
    (cache / "runs" / "20260101-000000.000-abcd" / "code" / "0").mkdir(parents=True)
    proc = project.orch("cache", "gc", env={"PATH": "/nonexistent"})
    assert "note: Slurm job folders and code snapshots kept: --executor slurm: `squeue` not found" in proc.stderr
    assert (cache / "slurm" / "jobs" / "4711").is_dir() and (cache / "runs" / "20260101-000000.000-abcd" / "code").is_dir()
    assert "Slurm job folders" not in proc.stdout


def test_gc_keeps_the_snapshot_of_a_run_an_uncollected_job_record_names(project, tmp_path):
    """A job record not collected yet names its run: that run's code snapshot (what the job imports) is
    kept even when `squeue` does not list the job (PrivateData=jobs hides a teammate's jobs); the
    snapshot of a run nothing names is deleted."""
    cache = project.root / ".orch"
    named, finished = "20260101-000000.000-abcd", "20260101-000001.000-ef01"
    for run in (named, finished):
        (cache / "runs" / run / "code" / "0").mkdir(parents=True)
        (cache / "runs" / run / "manifest.json").write_text(json.dumps({"status": "detached" if run == named else "ok"}))
    (cache / "slurm" / "jobs" / "99").mkdir(parents=True)
    (cache / "slurm" / "jobs" / "98").mkdir(parents=True)
    (cache / "slurm" / "inflight").mkdir(parents=True)
    (cache / "slurm" / "inflight" / "a1.json").write_text(json.dumps({"job_id": "99", "label": "s[p]", "run": named}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")  # an empty queue, as another user may see it
    (bin_dir / "squeue").chmod(0o755)
    proc = project.orch("cache", "gc", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert "deleted 1 Slurm job folders and 1 code snapshots of finished runs; kept those of 1 run(s) in flight" \
        in proc.stdout, proc.stdout
    assert (cache / "runs" / named / "code").is_dir() and (cache / "slurm" / "jobs" / "99").is_dir()
    assert not (cache / "runs" / finished / "code").exists() and not (cache / "slurm" / "jobs" / "98").exists()
