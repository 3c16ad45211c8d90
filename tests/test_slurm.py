"""`--executor slurm` against a real single-node Slurm (tests/slurm/start-cluster.sh), through the
real CLI on real temp projects; the cache is on the local filesystem, which is "shared" on one node.

In CI (.ci/run sets ORCH_REQUIRE_SLURM=1 after starting the cluster) these tests fail when the cluster
is missing; elsewhere they skip, saying how to start it. What Slurm did is checked with sacct (records
appear 1-3 s after a job ends: polled) and scontrol, never taken from orch's own output alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from conftest import ORCH, wait_for

START = "tests/slurm/start-cluster.sh"
HOST = socket.gethostname().split(".")[0]


def _cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'orch[slurm]')"
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "Slurm's commands are not installed"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix", "alloc", "comp"} & set(state.stdout.split()):
        return f"no Slurm node is up (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True).returncode != 0:
        return "sacct does not answer (slurmdbd down?)"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if not re.search(r"^ClusterName\s*=\s*orchtest$", config, re.M):  # never submit tests to a real cluster
        return "this Slurm is not the test cluster (ClusterName=orchtest)"
    return None


def require_cluster(problem: str | None, what: str) -> None:
    """Fail (ORCH_REQUIRE_SLURM=1, as in CI) or skip when the test cluster has `problem`."""
    if problem is None:
        return
    if os.environ.get("ORCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"ORCH_REQUIRE_SLURM=1 but {problem}; .ci/run starts it with {START} (as root)", pytrace=False)
    pytest.skip(f"{problem}: start {what} with `sudo {START}`")


@pytest.fixture(autouse=True, scope="module")
def _slurm_cluster():
    require_cluster(_cluster_problem(), "a single-node test cluster")


@pytest.fixture(autouse=True)
def _no_jobs_left_behind(project):
    """A test that fails while a job of its project waits (a held stage) must not slow the next one."""
    yield
    queue = subprocess.run(["squeue", "-h", "-o", "%F|%Z"], capture_output=True, text=True).stdout  # %F: arrays whole
    mine = {job for job, _, workdir in (line.partition("|") for line in queue.splitlines())
            if workdir == str(project.root) or workdir.startswith(str(project.root) + os.sep)}
    if mine:
        subprocess.run(["scancel", *sorted(mine)], check=True)


STAGES = '''
import os
import time
from orchestrator import stage, aggregate, PickleCacher
from stages.counting import count, wait_until

def mark(name):
    """Say, in a file the test polls, that this node runs in Slurm job N."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "?"))
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    with open(os.path.join(os.environ["ORCH_MARKS"], name), "w") as f:
        f.write(f"{job}_{task}" if task else job)

@stage(outputs=["y"], cachers=[PickleCacher], resources={"cpus": 1, "time": "00:10:00"})
def square(record):
    count("square")
    x = record.params.x
    print(f"square of {x} on its way")
    if x == record.params.fail_at:
        raise ValueError(f"no square for {x}")
    if x == record.params.hold_at:
        mark("held")
        release = os.path.join(os.environ["ORCH_MARKS"], "release")
        wait_until(lambda: os.path.exists(release), "the test to release (or cancel) this job", timeout=300)
    return x * x

@stage(inputs=["y"], outputs=["z"], cachers=[PickleCacher])
def plus(record, y):
    count("plus")
    return y + 1

@stage(outputs=["w"], cachers=[PickleCacher])
def other(record):
    count("other")
    return -record.params.x

@aggregate(inputs=["z"], outputs=["total"], cachers=[PickleCacher])
def total(record, z):
    count("total")
    return sum(z.values())
'''

EXPERIMENT = '''
from stages.sweep import square, plus, other, total

def run(record):
    plus(square(record))
    other(record)

def aggregate(records):
    total(records)
'''


def _sweep(project, n=4, fail_at=-1, hold_at=-1):
    project.write("stages/sweep.py", STAGES)
    project.write("experiment.py", EXPERIMENT)
    xs = ", ".join(str(i) for i in range(1, n + 1))
    project.write("params/p.yaml", f"x: 0\nfail_at: {fail_at}\nhold_at: {hold_at}\nsweep:\n  x: [{xs}]\n")
    (project.root / "marks").mkdir(exist_ok=True)
    return ["run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm"]


def _throttled(condition, seconds: float = 0.25):
    """`condition` for wait_for (which polls every 10 ms) asking Slurm at most every `seconds`."""
    def slower():
        time.sleep(seconds)
        return condition()
    return slower


def _env(project):
    return {"ORCH_MARKS": str(project.root / "marks")}


def _sacct(job: str, fields: str = "JobID,State") -> list[dict]:
    out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", fields], capture_output=True, text=True,
                         check=True).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]


def _ended(job: str, count: int, fields: str = "JobID,State") -> list[dict]:
    """sacct's rows of `job` once `count` of them have ended (records lag the jobs by 1-3 s)."""
    def rows():
        got = _sacct(job, fields)
        done = [r for r in got if r["State"].split()[0] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")
                and all(r.values())]  # a record can show its end before its other fields are filled in
        return got if len(done) == count else None
    return wait_for(_throttled(rows), f"sacct to show {count} ended tasks of job {job}", timeout=60,
                    detail=lambda: _sacct(job, fields))


def _submitted(stdout: str, stage: str) -> list[tuple[str, int]]:
    """(job id, tasks) of each submission of `stage` the head printed."""
    found = []
    for m in re.finditer(rf"^submitted {stage}: (?:array job (\d+) \((\d+) tasks\)|job (\d+)) ", stdout, re.M):
        found.append((m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), 1))
    return found


def test_a_sweep_goes_out_as_one_array_each_node_once_and_a_second_run_submits_nothing(project):
    args = _sweep(project, n=4)
    first = project.orch(*args, env=_env(project))
    squares = _submitted(first.stdout, "square")
    assert len(squares) == 1 and squares[0][1] == 4, first.stdout  # one array of 4, not 4 jobs
    rows = _ended(squares[0][0], 4)
    assert sorted(r["JobID"] for r in rows) == [f"{squares[0][0]}_{i}" for i in range(4)]
    assert {r["State"] for r in rows} == {"COMPLETED"}
    assert project.counts() == {"square": 4, "plus": 4, "other": 4, "total": 1}  # each node once
    assert re.search(rf"^job {squares[0][0]}_\d on {HOST}: square\[p\[x=1\]\] ran in \d+\.\d+s$", first.stdout, re.M)
    assert set(project.statuses().values()) == {"ran"}

    project.reset_counts()
    second = project.orch(*args, env=_env(project))
    assert "submitted" not in second.stdout, second.stdout
    assert project.counts() == {}
    assert set(project.statuses().values()) == {"cached"}
    # what the jobs stored is what a local run finds: the executor is no part of a key
    local = project.orch("run", "experiment.py", "-p", "params/p.yaml")
    assert set(project.statuses().values()) == {"cached"}, local.stdout


def test_a_failing_job_names_its_job_node_and_log_tail_skips_dependents_and_the_rest_goes_on(project):
    args = _sweep(project, n=3, fail_at=2)
    proc = project.orch(*args, env=_env(project), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job = _submitted(proc.stdout, "square")[0][0]
    failure = proc.stderr
    assert "FAILED  square [p[x=2]]" in failure and "ValueError: no square for 2" in failure, failure
    assert f"Slurm job {job}_1 on {HOST}" in failure, failure
    assert "square of 2 on its way" in failure  # the tail of the job's log
    assert f"slurm/jobs/{job}_1/{job}_1_0_log.out" in failure
    statuses = project.statuses()
    assert statuses[("square", "p[x=2]")] == "failed"
    assert statuses[("plus", "p[x=2]")] == "skipped" and statuses[("total", "aggregate")] == "skipped"
    assert statuses[("plus", "p[x=1]")] == statuses[("plus", "p[x=3]")] == "ran"
    assert {statuses[("other", f"p[x={i}]")] for i in (1, 2, 3)} == {"ran"}
    # the failed point ran once, in its job: Slurm saw the job itself succeed (orch caught the error)
    assert {r["State"] for r in _ended(job, 3)} == {"COMPLETED"}


def test_resources_reach_sbatch_from_the_stage_the_parameter_file_and_the_command_line(project):
    project.write("stages/res.py", '''
        from orchestrator import stage, PickleCacher

        @stage(outputs=["a"], cachers=[PickleCacher], resources={"cpus": 1, "mem": "100M", "time": "00:07:00"})
        def small(record):
            return 1

        @stage(outputs=["b"], cachers=[PickleCacher], resources={"cpus": 1, "partition": "debug"})
        def placed(record):
            return 2
    ''')
    project.write("experiment.py", '''
        from stages.res import small, placed

        def run(record):
            small(record)
            placed(record)
    ''')
    # the parameter file moves `placed` to another partition and gives it a time; not a parameter
    project.write("params/p.yaml", '''
        n: 1
        orch:
          resources:
            placed: {partition: second, time: "00:09:00"}
    ''')
    proc = project.orch("run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm",
                        "--slurm-account", "orchtest")
    fields = "JobID,State,Partition,AllocCPUS,Timelimit,Account,ReqMem,JobName"
    small_job = _submitted(proc.stdout, "small")[0][0]
    placed_job = _submitted(proc.stdout, "placed")[0][0]
    (small_row,) = _ended(small_job, 1, fields)
    (placed_row,) = _ended(placed_job, 1, fields)
    assert (small_row["Partition"], small_row["Timelimit"], small_row["Account"]) == ("debug", "00:07:00", "orchtest")
    assert small_row["ReqMem"] in ("100M", "100Mn") and small_row["JobName"] == "orch:small"
    assert (placed_row["Partition"], placed_row["Timelimit"], placed_row["Account"]) == ("second", "00:09:00", "orchtest")
    # --slurm-time overrides every stage; resources are no part of a key: nothing runs again
    again = project.orch("run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm",
                         "--slurm-time", "00:05:00")
    assert "submitted" not in again.stdout and set(project.statuses().values()) == {"cached"}
    # --quiet: no line per job either, only the summary
    (project.root / "stages" / "res.py").write_text((project.root / "stages" / "res.py").read_text()
                                                   .replace("return 1", "return 10"))
    quiet = project.orch("run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm", "-q")
    assert quiet.stdout.startswith("2 nodes: 1 ran, 1 cached") and len(quiet.stdout.splitlines()) == 1, quiet.stdout


def test_a_job_cancelled_behind_orchs_back_fails_its_node_with_the_job_named(project):
    args = _sweep(project, n=2, hold_at=2)
    proc = subprocess.Popen([*ORCH, *args], cwd=project.root, env={**os.environ, **_env(project),
                            "ORCH_COUNTS": str(project.counts_file)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        held = wait_for(lambda: (project.root / "marks" / "held").exists() and
                        (project.root / "marks" / "held").read_text(), "the held job to start", timeout=90)
        subprocess.run(["scancel", held], check=True)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert f"Slurm job {held} was cancelled" in err and f"on {HOST}" in err, err
    statuses = project.statuses()
    assert statuses[("square", "p[x=2]")] == "failed" and statuses[("plus", "p[x=2]")] == "skipped"
    assert statuses[("square", "p[x=1]")] == statuses[("plus", "p[x=1]")] == "ran"
    assert _ended(held, 1)[0]["State"].startswith("CANCELLED")


def test_ctrl_c_cancels_the_jobs_it_submitted(project):
    args = _sweep(project, n=1, hold_at=1)
    proc = subprocess.Popen([*ORCH, *args], cwd=project.root, env={**os.environ, **_env(project),
                            "ORCH_COUNTS": str(project.counts_file)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        held = wait_for(lambda: (project.root / "marks" / "held").exists() and
                        (project.root / "marks" / "held").read_text(), "the held job to start", timeout=90)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # no TTY: cancel without asking
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    # `other` may still be queued too: every job in flight is cancelled, the held one among them
    assert re.search(rf"^cancelled \d Slurm job\(s\): (\S+ )*{held}( |$)", err, re.M), err
    assert _ended(held, 1)[0]["State"].startswith("CANCELLED")
    assert time.monotonic() - started < 120  # KillWait=5: the job is gone well before its 300 s wait
    assert project.manifest()["status"] == "interrupted"


def _node_cpus() -> int:
    out = subprocess.run(["scontrol", "show", "node", HOST, "--oneliner"], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"\bCPUTot=(\d+)", out).group(1))


def _squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("freeze", ["1", "0"])
def test_code_edited_while_a_job_waits_in_the_queue(project, freeze):
    """Frozen (the default): the job runs the code as submitted, stored under that code's key, and the
    next run plans and runs the edit. Not frozen (ORCH_SLURM_FREEZE=0): the job imports the edited
    stage, sees it is not what was planned and refuses; never the new code's result under the old key."""
    args = _sweep(project, n=1)
    env = {**os.environ, **_env(project), "ORCH_COUNTS": str(project.counts_file), "ORCH_SLURM_FREEZE": freeze}
    # a job of the test's own holds every CPU: orch's jobs wait in the queue behind it
    blocker = subprocess.run(["sbatch", "--parsable", "-c", str(_node_cpus()), "-J", "orch-test-blocker",
                              "-o", "/dev/null", "--wrap", "sleep 300"], capture_output=True, text=True,
                             check=True).stdout.strip().split(";")[0]
    proc = None
    try:
        wait_for(_throttled(lambda: _squeue_state(blocker) == "RUNNING"), "the blocker to run", timeout=60)
        proc = subprocess.Popen([*ORCH, *args], cwd=project.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for(_throttled(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-n", "orch:square", "-o", "%T"],
                                                                capture_output=True, text=True).stdout),
                 "orch's job to be queued", timeout=60)
        project.write("stages/sweep.py", STAGES.replace('count("square")', 'count("square-edited")'))
    finally:
        subprocess.run(["scancel", blocker], check=True)
    out, err = proc.communicate(timeout=120)
    statuses = project.statuses()
    assert statuses[("other", "p[x=1]")] == "ran"
    if freeze == "1":
        assert proc.returncode == 0, out + err
        assert project.counts()["square"] == 1 and "square-edited" not in project.counts()
        assert list((project.root / ".orch" / "runs" / project.manifest()["run_id"] / "code").iterdir())
    else:
        assert proc.returncode == 1, out + err
        assert "CodeChangedError: stage square[p[x=1]]: its code changed between submission and the start" in err
        assert "square" not in project.counts() and "square-edited" not in project.counts()
        assert statuses[("square", "p[x=1]")] == "failed"
    project.reset_counts()
    again = project.orch(*args, env={**_env(project), "ORCH_SLURM_FREEZE": freeze})  # plans, runs the edit
    # (frozen: the edit gives the same value, so what is downstream stays cached: early cutoff)
    expected = {"square-edited": 1} if freeze == "1" else {"square-edited": 1, "plus": 1, "total": 1}
    assert project.counts() == expected, again.stdout


def test_detach_then_status_then_a_new_run_reattaches_to_the_jobs_in_flight(project):
    args = _sweep(project, n=2, hold_at=2)
    marks = project.root / "marks"
    detached = project.orch(*args, "--detach", env=_env(project))
    run_id = re.search(r"^detached: run (\S+), 4 Slurm job\(s\) in flight", detached.stdout, re.M).group(1)
    ((array, tasks),) = _submitted(detached.stdout, "square")
    assert tasks == 2 and project.manifest()["status"] == "detached"
    assert wait_for(lambda: (marks / "held").exists() and (marks / "held").read_text(), "the held job") == f"{array}_1"

    def status():
        return project.orch("status", run_id).stdout

    wait_for(lambda: re.search(rf"^done +square\[p\[x=1\]\] +job {array}_0 on {HOST}$", status(), re.M),
             "status to show the first point done", detail=status)
    shown = status()
    assert re.search(rf"^running +square\[p\[x=2\]\] +job {array}_1 on {HOST}$", shown, re.M), shown
    assert re.search(r"^waiting +plus\[p\[x=2\]\] .*not submitted", shown, re.M), shown
    # the same run again: finished points from the cache, the held one re-attached, not resubmitted
    proc = subprocess.Popen([*ORCH, *args], cwd=project.root, env={**os.environ, **_env(project),
                            "ORCH_COUNTS": str(project.counts_file)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        runs = project.root / ".orch" / "runs"
        wait_for(lambda: any((d / "slurm.json").exists() and f'"{array}_1"' in (d / "slurm.json").read_text()
                             for d in runs.iterdir() if d.is_dir() and not d.is_symlink() and d.name not in
                             (run_id, "latest")),
                 "the new run to attach to the held job")
        (marks / "release").write_text("")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert f"attached to job {array}_1: square[p[x=2]] (submitted by run {run_id}, running)" in out, out
    assert _submitted(out, "square") == []
    assert project.counts() == {"square": 2, "plus": 2, "other": 2, "total": 1}  # every node once, in all
    assert project.statuses()[("square", "p[x=1]")] == "cached"
    assert project.statuses()[("square", "p[x=2]")] == "ran"
    assert not list((project.root / ".orch" / "slurm" / "inflight").iterdir())  # collected: no record left


def test_arrays_are_chunked_at_the_array_size_limit(project):
    args = _sweep(project, n=5)
    proc = project.orch(*args, "--detach", env={**_env(project), "ORCH_SLURM_MAX_ARRAY": "2"})
    squares = _submitted(proc.stdout, "square")
    assert [tasks for _, tasks in squares] == [2, 2, 1], proc.stdout
    for (job, tasks), ids in zip(squares, (["_0", "_1"], ["_0", "_1"], [""])):  # (what else runs is cancelled)
        assert sorted(r["JobID"] for r in _ended(job, tasks)) == [job + i for i in ids]


REQUEUED = '''
import os
import time
from orchestrator import stage, PickleCacher
from stages.counting import count

@stage(outputs=["y"], cachers=[PickleCacher], resources={"requeue": 1})
def long(record):
    count("long")
    marks = os.environ["ORCH_MARKS"]
    with open(os.path.join(marks, "started-" + os.environ.get("SLURM_RESTART_COUNT", "0")), "w") as f:
        f.write(os.environ["SLURM_JOB_ID"])
    while not os.path.exists(os.path.join(marks, "release")):
        time.sleep(0.05)
    return 1
'''


def _job_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "--oneliner"], capture_output=True, text=True).stdout
    m = re.search(rf"\b{name}=(\S+)", out)
    return m.group(1) if m else ""


def test_a_job_warned_of_its_end_is_requeued_then_fails_its_node_past_the_requeue_limit(project):
    project.write("stages/long.py", REQUEUED)
    project.write("experiment.py", "from stages.long import long\n\ndef run(record):\n    long(record)\n")
    project.write("params/p.yaml", "x: 1\n")
    marks = project.root / "marks"
    marks.mkdir()
    proc = subprocess.Popen([*ORCH, "run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm"],
                            cwd=project.root, env={**os.environ, **_env(project), "ORCH_COUNTS": str(project.counts_file)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job = wait_for(lambda: (marks / "started-0").exists() and (marks / "started-0").read_text(), "the job")
        # what Slurm sends before a time limit (--signal=USR2@90) or a preemption
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        wait_for(_throttled(lambda: _job_field(job, "Restarts") == "1" and _job_field(job, "JobState") == "PENDING"),
                 "the job to be requeued", detail=lambda: _job_field(job, "JobState"))
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip the requeue delay
        wait_for(lambda: (marks / "started-1").exists(), "the requeued job to run the node again", timeout=90)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # once more: past the limit of 1
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "RequeueLimitReached: Slurm job" in err and "after 1 requeue(s), the limit" in err, err
    assert "requeued (1 of at most 1)" in err  # from the job's log
    assert project.counts() == {"long": 2}
    assert project.statuses()[("long", "p")] == "failed"


def test_ctrl_c_at_a_terminal_asks_before_cancelling(project):
    """At a terminal Ctrl-C asks; answering no leaves the jobs running, and their results land in the cache."""
    import pty

    args = _sweep(project, n=1, hold_at=1)
    marks = project.root / "marks"
    env = {**os.environ, **_env(project), "ORCH_COUNTS": str(project.counts_file)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: orch on the terminal
        os.chdir(project.root)
        os.execve(ORCH[0], [*ORCH, *args], env)
    seen = []

    def read_until(text: str) -> str:
        def more():
            import select

            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen.append(os.read(fd, 4096).decode(errors="replace"))
                except OSError:  # the child closed the terminal
                    return "".join(seen)
            return text in "".join(seen) and "".join(seen)
        return wait_for(more, f"{text!r} on the terminal", detail=lambda: "".join(seen))

    try:
        held = wait_for(lambda: (marks / "held").exists() and (marks / "held").read_text(), "the held job")
        os.kill(pid, signal.SIGINT)
        read_until("still queued or running? [Y/n]")
        os.write(fd, b"n\n")
        read_until("left running:")
        assert os.waitpid(pid, 0)[1] != 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # it exited, as it should
        os.close(fd)
    assert held in "".join(seen) and _squeue_state(held) == "RUNNING"  # not cancelled
    (marks / "release").write_text("")
    assert _ended(held, 1)[0]["State"] == "COMPLETED"


def test_in_memory_outputs_travel_back_from_their_job_to_the_next(project):
    project.write("stages/mem.py", '''
        import os
        from orchestrator import stage, PickleCacher

        @stage(outputs=["table"])  # no cacher: kept in memory, it comes back in the job's result
        def build(record):
            return {"rows": [record.params.n] * 3, "where": os.environ["SLURM_JOB_ID"]}

        @stage(inputs=["table"], outputs=["total"], cachers=[PickleCacher])
        def use(record, table):
            with open(os.path.join(os.environ["ORCH_MARKS"], "total"), "w") as f:
                f.write(f"{sum(table['rows'])} from job {table['where']} in job {os.environ['SLURM_JOB_ID']}")
            return sum(table["rows"])
    ''')
    project.write("experiment.py", "from stages.mem import build, use\n\ndef run(record):\n    use(build(record))\n")
    project.write("params/p.yaml", "n: 7\n")
    (project.root / "marks").mkdir()
    proc = project.orch("run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm",
                        "--slurm-partition", "second", env=_env(project))
    build_job, use_job = _submitted(proc.stdout, "build")[0][0], _submitted(proc.stdout, "use")[0][0]
    assert (project.root / "marks" / "total").read_text() == f"21 from job {build_job} in job {use_job}"
    assert {r["Partition"] for r in _ended(f"{build_job},{use_job}", 2, "JobID,State,Partition")} == {"second"}


def test_a_job_sbatch_refuses_fails_its_node_with_sbatchs_reason(project):
    args = _sweep(project, n=2)
    project.write("params/p.yaml", "x: 0\nfail_at: -1\nhold_at: -1\nsweep:\n  x: [1, 2]\n"
                                   "orch:\n  resources:\n    square: {partition: nowhere}\n")
    proc = project.orch(*args, env=_env(project), check=False)
    assert proc.returncode == 1
    assert "FAILED  square [p[x=1]] after 0.00s: SlurmSubmissionError: stage square[p[x=1]]: sbatch refused the job " \
           "(cpus=1, partition=nowhere, time=00:10:00)" in proc.stderr, proc.stderr
    assert "invalid partition" in proc.stderr.lower()
    statuses = project.statuses()
    assert statuses[("plus", "p[x=2]")] == "skipped" and statuses[("other", "p[x=2]")] == "ran"


def test_without_accounting_a_job_that_left_the_queue_without_a_result_fails_its_node(project, tmp_path):
    """A cluster where sacct knows nothing (no slurmdbd): squeue tells that the job is gone."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(0o755)
    args = _sweep(project, n=1, hold_at=1)
    env = {**os.environ, **_env(project), "ORCH_COUNTS": str(project.counts_file),
           "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "ORCH_SLURM_RESULT_GRACE": "2"}
    proc = subprocess.Popen([*ORCH, *args], cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        held = wait_for(lambda: (project.root / "marks" / "held").exists() and
                        (project.root / "marks" / "held").read_text(), "the held job to start", timeout=90)
        subprocess.run(["scancel", held], check=True)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert f"Slurm job {held} left Slurm's queue (sacct has no record of it) before the node finished" in err, err
    assert project.statuses()[("other", "p[x=1]")] == "ran"


def test_a_torchrun_stage_runs_its_ranks_inside_the_job(project):
    """run_external under torchrun inside a job (on CPU here; with resources={"gpus": N} and nproc="gpu",
    torchrun takes the GPUs Slurm gave the job through CUDA_VISIBLE_DEVICES)."""
    # torchrun runs its workers unbuffered (python -u), so print() is two writes (text, then newline) and
    # two ranks printing at once can interleave on the shared stream; one write of a whole line cannot.
    project.write("external/ranks.py", '''
        import os, sys
        sys.stdout.write(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} in job {os.environ['SLURM_JOB_ID']}\\n")
    ''')
    project.write("stages/dist.py", '''
        import os
        from orchestrator import stage, run_external, JsonCacher

        @stage(outputs=["ranks"], cachers=[JsonCacher], resources={"cpus": 1})
        def launch(record):
            return sorted(line for line in run_external(["external/ranks.py"], nproc=2, echo=False).tail
                          if line.startswith("rank "))
    ''')
    project.write("experiment.py", "from stages.dist import launch\n\ndef run(record):\n    launch(record)\n")
    project.write("params/p.yaml", "n: 1\n")
    proc = project.orch("run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm", timeout=240)
    job = _submitted(proc.stdout, "launch")[0][0]
    got = project.orch("get", "ranks", "-o", "ranks.json")
    assert "ranks" in got.stdout
    assert json.loads((project.root / "ranks.json").read_text()) == [f"rank {r} of 2 in job {job}" for r in (0, 1)]


def test_status_of_a_detached_run_shows_failures_and_what_they_block(project):
    args = _sweep(project, n=2, fail_at=2)
    detached = project.orch(*args, "--detach", env=_env(project))
    run_id = re.search(r"^detached: run (\S+),", detached.stdout, re.M).group(1)

    def status():
        return project.orch("status", run_id).stdout

    shown = wait_for(_throttled(lambda: (s := status()).count("\ndone") + s.count("\nfailed") == 4 and s, 1.0),
                     "every submitted job to end", timeout=90, detail=status)
    assert re.search(r"^failed +square\[p\[x=2\]\] +job \S+ on \S+ +\(ValueError: no square for 2", shown, re.M), shown
    assert re.search(r"^blocked +plus\[p\[x=2\]\] +\(upstream square\[p\[x=2\]\] failed\)$", shown, re.M), shown
    assert re.search(r"^waiting +plus\[p\[x=1\]\] .*`orch run` again submits it", shown, re.M), shown


def test_cache_gc_deletes_the_slurm_leftovers_of_finished_runs_only(project):
    """Job folders and code snapshots of finished runs go; a detached run with a job still queued keeps
    its snapshot (the job imports from it) and its job folders, until it is finished too."""
    jobs, runs = project.root / ".orch" / "slurm" / "jobs", project.root / ".orch" / "runs"
    (project.root / "data").mkdir()
    (project.root / "data" / "table.csv").write_text("a,b\n")  # linked from every snapshot: never deleted
    marks = project.root / "marks"
    finished = project.orch(*_sweep(project, n=1), env=_env(project))
    finished_id = project.manifest()["run_id"]
    finished_jobs = {job for job, _ in _submitted(finished.stdout, "square") + _submitted(finished.stdout, "plus")}
    assert (runs / finished_id / "code").is_dir() and {d.name for d in jobs.iterdir() if d.is_dir()} >= finished_jobs

    args = _sweep(project, n=2, hold_at=2)  # x=1 is cached; square[x=2] is held in its job
    detached = project.orch(*args, "--detach", env=_env(project))
    detached_id = re.search(r"^detached: run (\S+),", detached.stdout, re.M).group(1)
    held = wait_for(lambda: (marks / "held").exists() and (marks / "held").read_text(), "the held job")
    in_flight = set(json.loads((runs / detached_id / "slurm.json").read_text())["jobs"].values())

    gc = project.orch("cache", "gc")
    assert re.search(r"^deleted \d+ Slurm job folders and 1 code snapshots of finished runs; kept those of 1 run\(s\) "
                     r"in flight$", gc.stdout, re.M), gc.stdout
    assert not (runs / finished_id / "code").exists() and (runs / detached_id / "code").is_dir()
    left = {d.name for d in jobs.iterdir() if d.is_dir()}
    assert not left & finished_jobs and held in left and in_flight <= left, (left, in_flight)
    assert (project.root / "data" / "table.csv").read_text() == "a,b\n"

    (marks / "release").write_text("")
    wait_for(_throttled(lambda: not _squeue_state(held)), "the held job to end", timeout=60)
    project.orch(*args, env=_env(project))  # finishes the rest: everything is stored
    gc = project.orch("cache", "gc")
    assert re.search(r"^deleted \d+ Slurm job folders and 2 code snapshots of finished runs$", gc.stdout, re.M), gc.stdout
    assert not [d for d in jobs.iterdir() if d.is_dir()] and not list(runs.glob("*/code"))
    assert not [p for p in jobs.iterdir() if p.is_symlink()]  # no link to a deleted submission script
    again = project.orch(*args, env=_env(project))
    assert "submitted" not in again.stdout and set(project.statuses().values()) == {"cached"}
