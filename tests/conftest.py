"""Shared fixtures: real temp projects and the real `orch` CLI in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

_SCRIPT = Path(sys.executable).with_name("orch")
# The installed console script when there is one (what users run), else the module.
ORCH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestrator.cli"]

T = TypeVar("T")


def pytest_configure(config) -> None:
    """A suite started in the background by a shell without job control inherits SIGINT ignored, and
    so would every orch the tests start (an ignored signal stays ignored across exec): the Ctrl-C
    tests would see no Ctrl-C. A handler set here is reset to the default in every child instead."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_for(condition: Callable[[], T], state: str, timeout: float = 60.0,
             detail: Callable[[], object] | None = None) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    For a test that must act at a point another process reaches (a marker file, a line of output, a
    lock being waited on): wait for that state, never for a guessed amount of time. `timeout` only
    bounds a wait for a state that never comes; it is generous and no claim about speed. On timeout
    the failure names `state` (and `detail()`, the state actually seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; seen instead: {detail()!r}" if detail is not None else ""
            raise AssertionError(f"gave up after {timeout:g}s waiting for {state}{seen}")
        time.sleep(0.01)


class Project:
    """A throwaway experiment directory: write files, run `orch`, count stage executions."""

    def __init__(self, root: Path):
        self.root = root
        self.counts_file = root / "counts.txt"

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        # A fresh mtime even within the same clock tick, so parse caches see the edit.
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return path

    def orch(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "ORCH_COUNTS": str(self.counts_file), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        full_env.pop("ORCH_CACHE", None)
        if env and "ORCH_CACHE" in env:
            full_env["ORCH_CACHE"] = env["ORCH_CACHE"]
        proc = subprocess.run([*ORCH, *args], cwd=self.root, env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"orch {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def counts(self) -> dict[str, int]:
        """How many times each stage body executed (stages append their name to counts.txt)."""
        out: dict[str, int] = {}
        if self.counts_file.exists():
            for line in self.counts_file.read_text().split():
                out[line] = out.get(line, 0) + 1
        return out

    def reset_counts(self) -> None:
        self.counts_file.unlink(missing_ok=True)

    def manifest(self, run: str = "latest") -> dict:
        return json.loads((self.root / ".orch" / "runs" / run / "manifest.json").read_text())

    def statuses(self, run: str = "latest") -> dict[tuple[str, str], str]:
        return {(n["stage"], n["param_set"]): n["status"] for n in self.manifest(run)["nodes"]}


COUNTING = '''
import os
import time

def count(name):
    with open(os.environ["ORCH_COUNTS"], "a") as f:
        f.write(name + "\\n")

def wait_until(state, what, timeout=60):
    """Inside a test project's stage: wait for a state the test arranges (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not state():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.01)
'''


@pytest.fixture(params=["memory", "disk", "disk-posix", "disk-flock"])
def store(request, tmp_path):
    """Each Store implementation in turn: the in-memory twin and a DiskStore in a temp directory, with
    each kind of node lock (store.bytelocks): bytes of one file as open file description locks (what
    this kernel has) and as classic POSIX locks (macOS, Linux < 3.15), and flock files (a filesystem
    with flock only)."""
    from orchestrator.store import DiskStore, MemoryStore

    if request.param == "memory":
        return MemoryStore()
    disk = DiskStore(tmp_path / "cache")
    if request.param != "disk":
        disk._lock_kind = request.param.split("-")[1]  # what DiskStore.lock decides elsewhere
    return disk


def flip_stored_byte(store, info) -> Path:
    """Flip one byte of a stored object's file (same size: only a re-hash at load finds it), with a
    new mtime, as bit rot or a stray tool would; returns the file."""
    path = store.object_path(info, verify=False)
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return path


@pytest.fixture
def require_chromium() -> str:
    """Debian's `chromium`, for tests that open a page in a real browser. Missing: such a test fails
    when ORCH_REQUIRE_BROWSER=1 (CI, .ci/run, installs it and sets it) and is skipped elsewhere."""
    import shutil

    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("ORCH_REQUIRE_BROWSER") == "1":
            pytest.fail("ORCH_REQUIRE_BROWSER=1 but Debian's chromium is not on PATH (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; CI requires it)")
    return exe


@pytest.fixture
def project(tmp_path) -> Project:
    p = Project(tmp_path / "proj")
    p.root.mkdir()
    p.write("stages/__init__.py", "")
    p.write("stages/counting.py", COUNTING)
    return p


def pipeline(p: Project) -> Project:
    """The standard three-stage pipeline with a helper module, a base and a sweep parameter file."""
    p.write("stages/util.py", '''
        def scale(x):
            return x * 2
    ''')
    p.write("stages/data.py", '''
        from orchestrator import stage, PickleCacher, JsonCacher
        from stages.counting import count
        from stages.util import scale

        @stage(outputs=["data"], cachers=[PickleCacher])
        def make_data(record):
            """Make data."""
            count("make_data")
            return [scale(i) for i in range(record.params.data.n)]

        @stage(inputs=["data"], outputs=["model"], cachers=[PickleCacher])
        def train(record, data):
            count("train")
            return sum(data) * record.params.train.lr

        @stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
        def evaluate(record, model):
            count("evaluate")
            return {"score": model + 1}
    ''')
    p.write("experiment.py", '''
        from stages.data import make_data, train, evaluate

        def run(record):
            evaluate(train(make_data(record)))
    ''')
    p.write("params/base.yaml", '''
        data:
          n: 10
        train:
          lr: 0.1
          nproc: 1
    ''')
    p.write("params/sweep.yaml", '''
        extends: base.yaml
        sweep:
          train.lr: [0.1, 0.2]
    ''')
    return p
