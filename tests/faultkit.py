"""Shared by the fault-injection tests: a project whose big output is written slowly (so a kill lands
in the middle of the write), a check that the store holds only complete objects, and root-only
fixtures (mounts, users) that skip with a message outside CI and fail in CI (ORCH_REQUIRE_ROOT_TESTS=1)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.hashing import hash_path

# A cacher that writes the first half of the value, says so (a marker naming its pid) and, when
# the test asks for it (ORCH_TEST_HOLD_WRITE), waits there: the test kills the writer mid-object.
HALF_WRITER = '''
import os, time
from orchestrator import stage, JsonCacher
from orchestrator.cachers import Cacher
from stages.counting import count, wait_until

MARKS = os.path.join(os.path.dirname(os.environ["ORCH_COUNTS"]), "marks")


class HalfThenWait(Cacher):
    extension = ".bin"

    def save(self, obj, path):
        with open(path, "wb") as f:
            f.write(obj[: len(obj) // 2])
            f.flush()
            if os.environ.get("ORCH_TEST_HOLD_WRITE"):
                os.makedirs(MARKS, exist_ok=True)
                open(os.path.join(MARKS, f"writing-{os.getpid()}"), "w").close()
                wait_until(lambda: False, "the test to kill this writer", timeout=120)
            f.write(obj[len(obj) // 2:])
        return None

    def load(self, path, metadata=None):
        with open(path, "rb") as f:
            return f.read()


@stage(outputs=["small"], cachers=[JsonCacher])
def small(record):
    count("small")
    return record.params.i


@stage(outputs=["big"], cachers=[HalfThenWait])
def big(record):
    count("big")
    return bytes([record.params.i]) * (record.params.mb * 1024 * 1024)


@stage(inputs=["big"], outputs=["n"], cachers=[JsonCacher])
def size(record, big):
    count("size")
    return len(big)
'''


def half_writer_project(project, sets=(1,), mb: int = 8) -> tuple[str, ...]:
    """small and big side by side, size after big, per parameter set; returns the run's arguments."""
    project.write("stages/half.py", HALF_WRITER)
    project.write("experiment.py", '''
        from stages.half import big, size, small

        def run(record):
            small(record)
            size(big(record))
    ''')
    project.write("params/p.yaml", f"i: {sets[0]}\nmb: {mb}\n" + (f"sweep:\n  i: {list(sets)}\n" if len(sets) > 1 else ""))
    return ("run", "experiment.py", "-p", "params/p.yaml")


def writers(project) -> set[int]:
    """Pids of the processes that are in the middle of writing a big object (held there)."""
    marks = project.counts_file.parent / "marks"
    return {int(p.name.split("-")[1]) for p in marks.glob("writing-*")} if marks.is_dir() else set()


def entries(cache: Path) -> int:
    """How many whole entries the store holds (temp files of writes in progress are hidden)."""
    return sum(1 for p in (cache / "entries").rglob("*.json") if not p.name.startswith("."))


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a slow reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def assert_store_complete(cache: Path) -> list[Path]:
    """objects/ holds only complete objects whose content hashes to their name; returns what tmp/
    holds (where the leftovers of interrupted writes are allowed)."""
    objects = cache / "objects"
    for shard in objects.iterdir() if objects.is_dir() else ():
        for obj in shard.iterdir():
            name = shard.name + obj.name.split(".", 1)[0]
            kind, digest, _ = hash_path(obj)
            assert digest == name, f"{obj} does not hash to its name: a partial or damaged object"
    tmp = cache / "tmp"
    return list(tmp.iterdir()) if tmp.is_dir() else []


def orch_runs_status(project, cache: Path | None = None) -> str:
    """The latest run's status as readers show it (a dead run's "running" becomes "died")."""
    from orchestrator.runs.manifest import read_manifest

    return read_manifest(cache or project.root / ".orch")["status"]


# -- root-only environment --------------------------------------------------------------------------

def need_root(what: str) -> None:
    """Skip (with why) unless this process can do `what` as root; in CI, where
    ORCH_REQUIRE_ROOT_TESTS=1, fail instead: these tests must run there."""
    reason = None
    if os.geteuid() != 0:
        reason = f"{what} needs root (run the tests as root, as CI does)"
    if reason is None:
        return
    if os.environ.get("ORCH_REQUIRE_ROOT_TESTS") == "1":
        pytest.fail(f"ORCH_REQUIRE_ROOT_TESTS=1 but {reason}")
    pytest.skip(reason)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def _refused(what: str, out: subprocess.CompletedProcess) -> None:
    reason = f"{what} is not permitted here: {out.stderr.strip() or out.returncode}"
    if os.environ.get("ORCH_REQUIRE_ROOT_TESTS") == "1":
        pytest.fail(f"ORCH_REQUIRE_ROOT_TESTS=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str):
    """A tmpfs of `size` mounted on `directory` for the duration; always unmounted."""
    need_root("mounting a tmpfs")
    directory.mkdir(parents=True, exist_ok=True)
    out = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    if out.returncode != 0:
        _refused("mount -t tmpfs", out)
    try:
        yield directory
    finally:
        umount(directory)


@contextlib.contextmanager
def read_only_view(source: Path, directory: Path):
    """`source` bind-mounted read-only on `directory` (chmod does not stop root; a read-only
    mount does: EROFS); always unmounted."""
    need_root("a read-only bind mount")
    directory.mkdir(parents=True, exist_ok=True)
    out = _run("mount", "--bind", str(source), str(directory))
    if out.returncode != 0:
        _refused("mount --bind", out)
    try:
        out = _run("mount", "-o", "remount,bind,ro", str(directory))
        if out.returncode != 0:
            _refused("mount -o remount,bind,ro", out)
        yield directory
    finally:
        umount(directory)


def umount(directory: Path) -> None:
    if _run("umount", str(directory)).returncode != 0:
        _run("umount", "-l", str(directory))  # busy (a killed run's leftover): detach it anyway
