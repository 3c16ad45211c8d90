"""Faults of the cache's filesystem: full (a 2 MB tmpfs as the cache), read-only (a read-only bind
mount: chmod does not stop root), and without file locks. Each gives one clear message naming what could
not be written and what to do, no traceback, loses nothing that finished, leaves no partial object,
and the re-run after the fix recomputes only what is missing.

The mounts need root: they skip with a message elsewhere and must run in CI (ORCH_REQUIRE_ROOT_TESTS=1)."""

from __future__ import annotations

import subprocess

import pytest
from faultkit import assert_store_complete, entries, half_writer_project, orch_runs_status, read_only_view, tmpfs

# A cacher that saves the value, then fills the cache's filesystem (a file next to the cache), so
# that what orch writes next, the entry, finds no space.
FILL_AFTER = '''
import os
from orchestrator import stage, JsonCacher
from orchestrator.cachers import Cacher
from stages.counting import count


class ThenFill(Cacher):
    extension = ".json"

    def save(self, obj, path):
        with open(path, "w") as f:
            f.write(str(obj))
        filler = os.environ.get("ORCH_TEST_FILL")
        if filler:
            with open(filler, "ab") as f:
                try:
                    while True:
                        f.write(bytes(65536))
                        f.flush()
                except OSError:
                    pass  # full: what the test wants
        return None

    def load(self, path, metadata=None):
        with open(path) as f:
            return int(f.read())


@stage(outputs=["a"], cachers=[JsonCacher])
def first(record):
    count("first")
    return 1


@stage(inputs=["a"], outputs=["b"], cachers=[ThenFill])
def fill(record, a):
    count("fill")
    return a + 1


@stage(inputs=["b"], outputs=["c"], cachers=[JsonCacher])
def last(record, b):
    count("last")
    return b + 1
'''


@pytest.mark.parametrize("parallel", [[], ["--parallel", "2"]], ids=["in-process", "pool"])
def test_a_full_cache_fails_the_node_writing_an_object_and_keeps_the_rest(project, tmp_path, parallel):
    args = half_writer_project(project, mb=3)  # big: 3 MB, the cache holds 2
    with tmpfs(tmp_path / "cache", "2m") as cache:
        env = {"ORCH_CACHE": str(cache)}
        out = project.orch(*args, *parallel, check=False, env=env)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr
        assert "stage big[p]: output 'big'" in out.stderr and "no space left on device" in out.stderr
        assert "free space" in out.stderr
        statuses = {(s, p): st for (s, p), st in _statuses(cache).items()}
        assert statuses == {("small", "p"): "ran", ("big", "p"): "failed", ("size", "p"): "skipped"}
        assert orch_runs_status(project, cache) == "failed"
        assert assert_store_complete(cache) == []  # the half-written file is removed, not left in tmp/
        subprocess.run(["mount", "-o", "remount,size=16m", str(cache)], check=True)  # free space
        project.reset_counts()
        project.orch(*args, *parallel, env=env)
        assert project.counts() == {"big": 1, "size": 1}  # small was kept


def test_a_full_cache_while_writing_an_entry_fails_that_node_cleanly(project, tmp_path):
    project.write("stages/fill.py", FILL_AFTER)
    project.write("experiment.py", '''
        from stages.fill import first, fill, last

        def run(record):
            last(fill(first(record)))
    ''')
    args = ("run", "experiment.py")
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        cache, filler = mnt / "cache", mnt / "filler"
        env = {"ORCH_CACHE": str(cache), "ORCH_TEST_FILL": str(filler)}
        out = project.orch(*args, check=False, env=env)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert "stage fill[default]: its cache entry" in out.stderr and "no space left on device" in out.stderr
        # and the run's record cannot be finished either: said as clearly, and it reads as died
        assert "recording the end of run" in out.stderr
        assert orch_runs_status(project, cache) == "died"
        assert entries(cache) == 1  # first's entry: finished work is kept
        assert_store_complete(cache)
        filler.unlink()
        project.reset_counts()
        project.orch(*args, env={"ORCH_CACHE": str(cache)})
        assert project.counts() == {"fill": 1, "last": 1}
        assert orch_runs_status(project, cache) == "ok"


def test_a_read_only_cache_serves_cached_runs_and_refuses_to_compute(project, tmp_path):
    args = half_writer_project(project, mb=1)
    project.orch(*args)
    project.reset_counts()
    with read_only_view(project.root / ".orch", tmp_path / "ro") as ro:
        env = {"ORCH_CACHE": str(ro)}
        before = project.orch("runs", env=env).stdout
        cached = project.orch(*args, "-j", "2", env=env)
        assert "3 nodes: 3 cached" in cached.stdout and "not recorded" in cached.stdout
        assert "read-only" in cached.stderr and "Traceback" not in cached.stderr
        assert project.orch("runs", env=env).stdout == before  # nothing recorded
        refused = project.orch(*args, "-S", "i=2", check=False, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"the cache {ro} is read-only for you and 3 node(s) must run" in refused.stderr
        assert "small[p], big[p], size[p]" in refused.stderr
        assert project.counts() == {}  # refused before anything ran
        assert "run     small" in project.orch(*args, "-S", "i=2", "--dry", env=env).stdout
        got = project.orch("get", "small", "-o", str(tmp_path / "small.json"), env=env)
        assert got.returncode == 0 and (tmp_path / "small.json").read_text().strip() == "1"
        assert "2 entries" in project.orch("cache", "ls", env=env).stdout or "3 entries" in project.orch(
            "cache", "ls", env=env).stdout
        verify = project.orch("cache", "verify", check=False, env=env)  # it may quarantine: needs write
        assert verify.returncode == 1 and "not writable" in verify.stderr and "Traceback" not in verify.stderr


def test_a_filesystem_without_locks_is_one_clear_error_before_anything_runs(project):
    """Simulated: the experiment makes flock(2) and fcntl(2)'s locks fail as they do on such a
    filesystem (ENOLCK)."""
    args = half_writer_project(project, mb=1)
    project.write("experiment.py", '''
        import errno, fcntl
        from stages.half import big, size, small

        _fcntl = fcntl.fcntl
        _LOCKING = {fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW, fcntl.F_OFD_GETLK, fcntl.F_SETLK, fcntl.F_SETLKW}

        def _no_flock(fd, operation):
            raise OSError(errno.ENOLCK, "No locks available")

        def _no_locks(fd, cmd, arg=0):
            if cmd in _LOCKING:
                raise OSError(errno.ENOLCK, "No locks available")
            return _fcntl(fd, cmd, arg)

        def _no_lockf(*args):
            raise OSError(errno.ENOLCK, "No locks available")

        fcntl.flock = _no_flock
        fcntl.fcntl = _no_locks
        fcntl.lockf = _no_lockf

        def run(record):
            small(record)
            size(big(record))
    ''')
    for parallel in ([], ["-j", "2"]):
        out = project.orch(*args, *parallel, check=False)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "does not support file locks" in out.stderr and "--cache DIR / ORCH_CACHE" in out.stderr
        assert project.counts() == {}
        assert not (project.root / ".orch" / "runs").exists()  # refused before the run was recorded


def _statuses(cache):
    from orchestrator.runs.manifest import read_manifest

    return {(n["stage"], n["param_set"]): n["status"] for n in read_manifest(cache)["nodes"]}
