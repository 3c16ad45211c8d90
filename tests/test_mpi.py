"""`mpiexec -n N orch run ...`: rank 0 schedules, ranks 1..N-1 run nodes, all share the store.

Oversubscribed on purpose (5 ranks on a 2-core box): idle ranks must sleep, not spin, or these
tests get slow. Every launch has a timeout: a hang is a failure, never a stuck CI job (and no test
asserts how long a launch took).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_parallel import SWEEP8, check_sweep_result, failing_sweep_project, plain_counts, rank_counts, sweep_project

pytest.importorskip("mpi4py")
_local = Path(sys.executable).with_name("mpiexec")
MPIEXEC = str(_local) if _local.exists() else shutil.which("mpiexec")
if MPIEXEC is None:  # pragma: no cover - mpich comes with the `mpi` extra
    pytest.skip("mpiexec not found (pip install 'orch[mpi]')", allow_module_level=True)

# What the README tells users: abort semantics of `python -m mpi4py` around the orch CLI.
ORCH_MPI = [sys.executable, "-m", "mpi4py", "-m", "orchestrator.cli"]
_script = Path(sys.executable).with_name("orch")
ORCH_SCRIPT = [str(_script)] if _script.exists() else [sys.executable, "-m", "orchestrator.cli"]


def mpirun(project, n: int, *args: str, orch=ORCH_MPI, timeout: float = 90,
           launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ORCH_CACHE", None)
    return subprocess.run([MPIEXEC, *launcher, "-n", str(n), *orch, *args], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sweep_under_mpiexec_5_runs_each_computation_once_on_worker_ranks(project):
    sweep_project(project, train_ranks=2)  # a train finishes only once trains run on two ranks at once
    out = mpirun(project, 5, *SWEEP8)
    assert out.returncode == 0, out.stderr
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    check_sweep_result(project)
    trained_on = rank_counts(project, "train")
    assert "0" not in trained_on and set(trained_on) <= {"1", "2", "3", "4"}
    assert len(trained_on) >= 2  # the work is spread over ranks, side by side
    assert out.stdout.count("25 nodes: 18 ran, 7 cached") == 1  # rank 0 alone reports
    runs = [p for p in (project.root / ".orch" / "runs").iterdir() if p.name != "latest"]
    assert len(runs) == 1  # and alone writes the manifest
    again = mpirun(project, 5, *SWEEP8)
    assert again.returncode == 0, again.stderr
    assert "25 nodes: 25 cached" in again.stdout
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}


def test_the_orch_script_works_under_mpiexec_without_mpi4py_run(project):
    sweep_project(project)
    out = mpirun(project, 3, *SWEEP8, orch=ORCH_SCRIPT)
    assert out.returncode == 0, out.stderr
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    assert set(rank_counts(project, "train")) <= {"1", "2"}


@pytest.mark.parametrize("orch", [ORCH_MPI, ORCH_SCRIPT], ids=["python-m-mpi4py", "orch-script"])
def test_a_failing_stage_under_mpi_is_reported_with_its_rank_and_ends_the_job(project, orch):
    failing_sweep_project(project)
    out = mpirun(project, 5, *SWEEP8, orch=orch, timeout=60)  # a job that does not end is a TimeoutExpired
    assert out.returncode != 0
    assert "check [sweep8[train.lr=0.3]]" in out.stderr and "lr 0.3 is cursed" in out.stderr
    assert "on MPI rank " in out.stderr
    statuses = project.statuses()  # everything else finished and was recorded
    assert statuses[("check", "sweep8[train.lr=0.3]")] == "failed"
    assert sum(s == "ran" for (stage, _), s in statuses.items() if stage == "check") == 7


def crash_project(project) -> None:
    project.write("stages/crash.py", '''
        import os, time
        from orchestrator import stage, JsonCacher

        @stage(outputs=["x"], cachers=[JsonCacher])
        def crash(record):
            with open(os.environ["ORCH_COUNTS"], "a") as f:
                f.write(f"start{record.params.i}\\n")
            if record.params.i == 2:
                os._exit(7)
            time.sleep(0.2)
            return record.params.i
    ''')
    project.write("experiment.py", '''
        from stages.crash import crash

        def run(record):
            crash(record)
    ''')
    project.write("params/four.yaml", "i: 0\nsweep:\n  i: [1, 2, 3, 4]\n")


def test_a_rank_that_dies_ends_the_job_instead_of_hanging(project):
    crash_project(project)
    out = mpirun(project, 3, "run", "experiment.py", "-p", "params/four.yaml", timeout=60)  # no hang: ends
    assert out.returncode != 0
    assert project.counts().get("start2") == 1  # the job ended because the rank died in the stage
    assert project.manifest()["status"] != "ok"


def test_an_error_on_rank_0_before_scheduling_releases_the_workers(project):
    sweep_project(project)
    out = mpirun(project, 4, "run", "experiment.py", "--params", "params/missing.yaml", timeout=60)  # no hang
    assert out.returncode != 0
    assert out.stderr.count("missing.yaml") == 1  # reported once, by rank 0


def test_mpiexec_with_one_rank_is_a_plain_run(project):
    sweep_project(project)
    out = mpirun(project, 1, *SWEEP8)
    assert out.returncode == 0, out.stderr
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}


def test_rank_0_prints_heartbeats_with_the_metric_a_worker_rank_logs(project):
    """Under MPI the display lives on rank 0 (its stdout is the launcher's pipe: plain lines); the
    metric comes from the stream the stage writes on a worker rank."""
    from test_progress import FAST, Streamed, orch_env, release, slow_project

    args = slow_project(project)
    run = Streamed([MPIEXEC, "-n", "3", *ORCH_MPI, *args], project.root, orch_env(project, FAST))
    try:
        run.wait_for_output(r"started train \[base\] \d+s ago\n", "rank 0's started line for train")
        run.wait_for_output(r"progress \d+s: 0/2 done, 1 running, 1 pending; running: train \[base\] \d+s  step 3  "
                            r"loss=0.5\n", "a heartbeat with the metric logged on a worker rank")
        release(project, "train-0.5")
        assert run.finish(timeout=90) == 0, run.stdout + run.stderr
    finally:
        run.kill()
    assert "\x1b" not in run.stdout + run.stderr
    assert run.stdout.count("2 nodes: 2 ran") == 1  # rank 0 alone prints


def test_rank_0_ends_the_job_when_a_worker_of_its_host_dies_and_the_launcher_does_not(project):
    """hydra told not to clean up after a dead rank (it was seen not to, now and then, by itself):
    rank 0 notices the worker's pid is gone, names the rank and the node, and aborts the job."""
    crash_project(project)
    out = mpirun(project, 3, "run", "experiment.py", "-p", "params/four.yaml", timeout=60,
                 launcher=("-disable-auto-cleanup",))
    assert out.returncode != 0
    assert project.counts().get("start2") == 1
    assert re.search(r"orch: MPI rank [12] \(pid \d+ on .+\) died while running crash\[four\[i=2\]\]; aborting "
                     r"the MPI job", out.stderr), out.stderr
