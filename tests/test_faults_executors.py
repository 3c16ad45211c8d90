"""Faults on every executor: kill -9 of the process writing a big object (a `--parallel` worker, an
MPI rank) and of the coordinator while its workers run. Each time: the run ends and says so, objects/
holds only complete, hash-verified objects (leftovers stay in tmp/), and the re-run completes,
recomputing only the work that had not finished. The kill always lands at a state the stage
reports (a marker file naming the writer's pid), never after a guessed sleep."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ORCH, wait_for
from faultkit import alive, assert_store_complete, entries, half_writer_project, orch_runs_status, writers


def _start(project, args, *, argv=None, hold=True, start_method=None) -> subprocess.Popen:
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ORCH_CACHE", None)
    env.pop("ORCH_START_METHOD", None)
    if start_method:
        env["ORCH_START_METHOD"] = start_method
    env.pop("ORCH_TEST_HOLD_WRITE", None)
    if hold:
        env["ORCH_TEST_HOLD_WRITE"] = "1"
    return subprocess.Popen([*(argv or ORCH), *args], cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _rerun_recomputes_only_big(project, args, sets=1):
    """The re-run completes; small (finished before the kill) is not computed again."""
    project.reset_counts()
    project.orch(*args)
    assert project.counts() == {"big": sets, "size": sets}
    assert orch_runs_status(project) == "ok"
    project.reset_counts()
    assert f"{3 * sets} nodes: {3 * sets} cached" in project.orch(*args).stdout


def test_kill_9_of_a_pool_worker_mid_object_fails_its_node_and_leaves_no_partial_object(project):
    args = half_writer_project(project, mb=8)
    proc = _start(project, (*args, "--parallel", "2"))
    killed: set[int] = set()
    try:
        # When other nodes were in flight too, the pool retries them one at a time, big again among
        # them: kill every writer that reaches the middle of the object until the run ends.
        while proc.poll() is None:
            pids = wait_for(lambda: (writers(project) - killed) or proc.poll() is not None,
                            "a pool worker in the middle of writing the big object")
            if pids is True:
                break
            wait_for(lambda: entries(project.root / ".orch") == 1, "small's entry (so small is not in flight)")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "big [p]" in err and "worker process died abruptly" in err and "Traceback" not in err
    statuses = project.statuses()
    assert statuses == {("small", "p"): "ran", ("big", "p"): "failed", ("size", "p"): "skipped"}
    row = next(n for n in project.manifest()["nodes"] if n["stage"] == "big")
    assert row["error"].startswith("WorkerDied:")
    leftovers = assert_store_complete(project.root / ".orch")
    assert any(".out.big" in p.name for p in leftovers)  # the half-written object, in tmp/ only
    assert project.counts() == {"small": 1, "big": len(killed)}
    _rerun_recomputes_only_big(project, args)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_kill_9_of_the_coordinator_takes_its_pool_workers_down(project, start_method):
    """`orch run -j 2` killed while both workers are in the middle of a write: the workers die with
    it (they would otherwise finish for nobody and hold their node locks), the store is intact, the
    run reads as died, and the re-run redoes only what was unfinished. With forkserver (a coordinator
    with threads) the workers' parent is the fork server, which exits with the coordinator."""
    args = half_writer_project(project, sets=(1, 2), mb=8)
    proc = _start(project, (*args, "--parallel", "2"), start_method=start_method)
    try:
        pids = wait_for(lambda: len(writers(project)) == 2 and writers(project), "both workers mid-write",
                        detail=lambda: project.counts())
        assert project.counts()["small"] == 2  # finished before the bigs took both workers
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone, not its process group
        proc.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in pids), "the orphaned workers to die",
                 detail=lambda: {p: alive(p) for p in pids})
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in writers(project):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert orch_runs_status(project) == "died"
    assert project.manifest()["status"] == "running"  # what the file says; readers see it died
    runs = project.orch("runs").stdout
    assert " died " in runs
    assert any(".out.big" in p.name for p in assert_store_complete(project.root / ".orch"))
    _rerun_recomputes_only_big(project, args, sets=2)


# -- MPI ----------------------------------------------------------------------------------------------

def _mpiexec() -> str:
    pytest.importorskip("mpi4py")
    local = Path(sys.executable).with_name("mpiexec")
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec not found (pip install 'orch[mpi]')")
    return found


def test_kill_9_of_an_mpi_rank_mid_object_ends_the_job_and_the_rerun_continues(project):
    """mpich's launcher ends the whole job when a rank dies (SIGKILL to every rank, rank 0
    included: nothing can be recorded then). What orch guarantees: the job ends rather than hangs,
    `orch runs`/`show` say the run died (its liveness lock is free), no partial object is in the
    store, and the re-run recomputes only what had not finished."""
    mpiexec = _mpiexec()
    args = half_writer_project(project, mb=8)
    proc = _start(project, args, argv=[mpiexec, "-n", "3", sys.executable, "-m", "mpi4py", "-m", "orchestrator.cli"])
    try:
        (pid,) = wait_for(lambda: writers(project), "an MPI rank in the middle of writing the big object",
                          detail=lambda: project.counts())
        wait_for(lambda: entries(project.root / ".orch") == 1, "small to be stored by the other rank")
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)  # the job ends: no hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert orch_runs_status(project) == "died"
    assert any(".out.big" in p.name for p in assert_store_complete(project.root / ".orch"))
    project.reset_counts()
    project.orch(*args)  # continues without MPI: the store is the same
    assert project.counts() == {"big": 1, "size": 1}


_EXTERNAL_STAGE = """
    import sys
    from pathlib import Path
    from orchestrator import stage, run_external, JsonCacher

    @stage(outputs=["out"], cachers=[JsonCacher])
    def train(record):
        run_external([sys.executable, str(Path(__file__).parent / "hang.py"), record.params.pids], echo=False)
        return 1

    def run(record):
        train(record)
"""

_HANG = """
    import os, subprocess, sys, time
    from pathlib import Path

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)
"""


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_kill_9_of_orch_stops_the_external_command_it_started(project, tmp_path, parallel):
    """kill -9 of `orch run` (or of the coordinator of a pool whose worker runs the stage) while a
    stage's run_external command and that command's own child run: both are stopped (the command runs
    in its own session, so without the guard they would run on for nobody)."""
    pids_file = tmp_path / "pids"
    project.write("experiment.py", _EXTERNAL_STAGE)
    project.write("hang.py", _HANG)
    project.write("params/p.yaml", f"pids: {str(pids_file)!r}\n")
    proc = _start(project, ("run", "experiment.py", "-p", "params/p.yaml", "--parallel", parallel), hold=False)
    try:
        wait_for(lambda: len(_pids_in(pids_file)) == 2 or proc.poll() is not None, "the external command to start")
        assert proc.poll() is None, proc.communicate()
        command, child = (int(p) for p in pids_file.read_text().split())
        assert alive(command) and alive(child)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not alive(command) and not alive(child), "the external command and its child to be stopped",
                 timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _pids_in(pids_file):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pids_in(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []
