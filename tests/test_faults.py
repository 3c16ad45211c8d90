"""Fault injection: kill -9 at any moment, then re-run: the run completes, every value is right, and
nothing that had finished is done again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
from conftest import ORCH, wait_for

from orchestrator.store import Entry

CHAIN = '''
import os, time
from orchestrator import stage, PickleCacher
from stages.counting import count

def _hold(name):
    """Stay in stage `name` until the test kills or interrupts this run (it waits for name-start first)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError(f"{name} was held for 120 s and the test never ended the run")

def _step(name, x, record):
    count(name + "-start")
    if os.environ.get("ORCH_TEST_HOLD") == name:
        _hold(name)
    time.sleep(record.params.sleep)
    big = bytes(record.params.mb * 1024 * 1024)  # a save that takes a while
    count(name)
    return (x + 1, big)

@stage(outputs=["x"], cachers=[PickleCacher])
def s0(record):
    return _step("s0", 0, record)

@stage(inputs=["x"], outputs=["x"], cachers=[PickleCacher])
def s1(record, x):
    return _step("s1", x[0], record)

@stage(inputs=["x"], outputs=["x"], cachers=[PickleCacher])
def s2(record, x):
    return _step("s2", x[0], record)

@stage(inputs=["x"], outputs=["x"], cachers=[PickleCacher])
def s3(record, x):
    return _step("s3", x[0], record)

@stage(inputs=["x"], outputs=["result"], cachers=[PickleCacher])
def final(record, x):
    count("final")
    return x[0]
'''


def _project(project, sleep=0.0, mb=20):
    project.write("stages/chain.py", CHAIN)
    project.write("experiment.py", '''
        from stages.chain import s0, s1, s2, s3, final

        def run(record):
            final(s3(s2(s1(s0(record)))))
    ''')
    project.write("params/p.yaml", f"sleep: {sleep}\nmb: {mb}\n")
    return ("run", "experiment.py", "-p", "params/p.yaml")


def _start(project, args, hold: str | None = None):
    """`orch` in its own process group; with `hold`, that stage stays running until the test acts."""
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file)}
    env.pop("ORCH_TEST_HOLD", None)
    if hold:
        env["ORCH_TEST_HOLD"] = hold
    return subprocess.Popen([*ORCH, *args], cwd=project.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_for_count(project, name: str) -> None:
    """Wait until a stage body has reached the point where it counts `name`."""
    wait_for(lambda: project.counts().get(name), f"the stage to count {name!r}", detail=project.counts)
    assert project.counts()[name] >= 1


def _lock_waits(waiter: int, holder: int, cache) -> bool:
    """Process `waiter` is blocked on a node lock (a byte of the cache's locks/nodes.lock) that process
    `holder` holds. /proc/locks names no process for open file description locks ("-1"), so the
    holder is found by the lock its lock file descriptor shows in /proc/<pid>/fdinfo, and the waiter
    by a thread of it asleep in fcntl's lock wait with that file open, while a request for the same
    byte waits."""
    nodes = cache / "locks" / "nodes.lock"
    try:
        inode = f":{os.stat(nodes).st_ino}"
    except FileNotFoundError:
        return False

    def fds_on_nodes(pid: int) -> list[str]:
        fd_dir = f"/proc/{pid}/fd"
        found = []
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}") == str(nodes):
                    found.append(fd)
            except FileNotFoundError:
                continue
        return found

    held = set()
    for fd in fds_on_nodes(holder):
        try:
            with open(f"/proc/{holder}/fdinfo/{fd}") as f:
                held |= {tuple(line.split()[-2:]) for line in f if line.startswith("lock:") and "OFDLCK" in line}
        except FileNotFoundError:
            continue
    with open("/proc/locks") as f:  # "N: -> OFDLCK ADVISORY WRITE -1 maj:min:inode start end"
        awaited = {tuple(fields[-2:]) for fields in map(str.split, f)
                   if fields[1] == "->" and fields[2] == "OFDLCK" and fields[6].endswith(inode)}
    def waits_in_fcntl(pid: int) -> bool:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                    # fcntl_setlk (or do_lock_file_wait where the kernel does not inline it): in F_OFD_SETLKW
                    if any(name in f.read() for name in ("setlk", "lock_file_wait")):
                        return True
            except FileNotFoundError:
                continue
        return False

    return bool(held & awaited) and bool(fds_on_nodes(waiter)) and waits_in_fcntl(waiter)


def test_kill_between_stages_then_rerun_redoes_nothing_finished(project):
    args = _project(project)
    proc = _start(project, args, hold="s2")
    _wait_for_count(project, "s2-start")  # s2 is running (held there): the kill lands inside it
    _kill(proc)
    done_before = project.counts()
    assert done_before == {"s0-start": 1, "s0": 1, "s1-start": 1, "s1": 1, "s2-start": 1}
    project.reset_counts()
    project.orch(*args)
    after = project.counts()
    assert "s0" not in after and "s1" not in after  # finished work is kept
    assert after["s2"] == after["s3"] == after["final"] == 1
    nodes = {n["stage"]: n for n in project.manifest()["nodes"]}
    assert nodes["final"]["status"] == "ran"
    project.reset_counts()
    project.orch(*args)
    assert project.counts() == {}


def test_kill_at_random_moments_never_corrupts_the_cache(project):
    args = _project(project, sleep=0.05, mb=40)
    rng = random.Random(1234)
    for _ in range(6):
        proc = _start(project, args)
        time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            _kill(proc)
    project.orch(*args)
    final = [n for n in project.manifest()["nodes"] if n["stage"] == "final"][0]
    result = final["outputs"]["result"]
    obj = project.root / ".orch" / "objects" / result[:2] / (result[2:] + ".pkl")
    import pickle

    assert pickle.loads(obj.read_bytes()) == 4
    again = project.orch(*args)
    assert "5 nodes: 5 cached" in again.stdout
    # every stored entry points at an intact object (verify exits 1 on any damage)
    verify = project.orch("cache", "verify")
    assert "0 damaged" in verify.stdout
    # an interrupted entry write never leaves a half-visible entry: what a listing sees (temp files are
    # hidden) is only ever a whole entry
    visible = [p for p in (project.root / ".orch" / "entries").rglob("*.json") if not p.name.startswith(".")]
    assert len(visible) == 5
    for path in visible:
        Entry.from_json(json.loads(path.read_bytes()))  # raises EntryError on a partial entry


def test_kill_while_another_process_waits_on_the_node_lock(project):
    """The lock dies with its holder: a second run waiting on it takes over and completes."""
    args = _project(project, mb=1)
    first = _start(project, args, hold="s0")
    _wait_for_count(project, "s0-start")  # first computes s0, under s0's node lock
    second = _start(project, args)
    try:
        cache = project.root / ".orch"
        wait_for(lambda: _lock_waits(second.pid, first.pid, cache), "the second run to block on a lock the first holds",
                 detail=lambda: open("/proc/locks").read())
        assert _lock_waits(second.pid, first.pid, cache) and project.counts() == {"s0-start": 1}
        _kill(first)
        assert second.wait(timeout=60) == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                _kill(proc)
    counts = project.counts()
    assert counts["s0-start"] == 2 and counts["s0"] == 1  # the second run computed s0 itself, once
    assert counts["final"] == 1 and counts["s3"] == 1


def _assert_interrupted_after_s0(project) -> None:
    """The manifest of a run stopped while s1 ran: interrupted, s0 ran, nothing after it claims to be done."""
    m = project.manifest()
    assert m["status"] == "interrupted"
    statuses = {n["stage"]: n["status"] for n in m["nodes"]}
    assert statuses.pop("s0") == "ran"
    assert not set(statuses.values()) & {"ran", "cached"}, statuses


def test_ctrl_c_keeps_finished_work_and_records_the_interruption(project):
    args = _project(project, mb=1)
    proc = _start(project, args, hold="s1")
    _wait_for_count(project, "s1-start")  # s0 is done and s1 is running (held there)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    _assert_interrupted_after_s0(project)
    project.reset_counts()
    project.orch(*args)
    assert "s0" not in project.counts() and project.counts()["final"] == 1


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sigterm_ends_the_run_like_ctrl_c(project, parallel):
    """`kill PID` (SIGTERM to orch alone, as a scheduler or a container stop sends it): exit 143, the
    manifest says interrupted (not "died"), finished work is kept, and with --parallel the workers are
    stopped rather than waited for (the held stage would keep its worker busy for 120 s)."""
    args = (*_project(project, mb=1), "--parallel", parallel)
    proc = _start(project, args, hold="s1")
    _wait_for_count(project, "s1-start")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    _assert_interrupted_after_s0(project)
    assert "s1" not in project.counts()
    project.reset_counts()
    project.orch(*args)
    assert "s0" not in project.counts() and project.counts()["final"] == 1


def test_checkpoint_dir_lets_a_failed_stage_resume_and_is_removed_on_success(project):
    """A stage that checkpoints its progress into record.checkpoint_dir() resumes after a failure
    instead of starting over; once it succeeded the directory is gone."""
    project.write("stages/long.py", '''
        import os
        from orchestrator import stage, JsonCacher
        from stages.counting import count

        @stage(outputs=["result"], cachers=[JsonCacher])
        def train(record):
            ckpt = os.path.join(record.checkpoint_dir(), "step.txt")
            step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
            while step < record.params.steps:
                step += 1
                count(f"step{step}")
                if step == 3 and os.environ.get("CRASH_AT_3"):
                    raise RuntimeError("the machine went down at step 3")
                with open(ckpt, "w") as f:
                    f.write(str(step))
            return {"steps": step}
    ''')
    project.write("experiment.py", '''
        from stages.long import train

        def run(record):
            train(record)
    ''')
    project.write("params/p.yaml", "steps: 5\n")
    args = ("run", "experiment.py", "-p", "params/p.yaml")
    failed = project.orch(*args, check=False, env={"CRASH_AT_3": "1"})
    assert failed.returncode == 1 and "step 3" in failed.stderr
    assert project.counts() == {"step1": 1, "step2": 1, "step3": 1}
    scratch = project.root / ".orch" / "scratch"
    assert len(list(scratch.iterdir())) == 1
    project.reset_counts()
    project.orch(*args)
    assert project.counts() == {"step3": 1, "step4": 1, "step5": 1}  # resumed after step 2
    assert list(scratch.iterdir()) == []
    project.reset_counts()
    project.orch(*args, "-S", "steps=6", check=True)
    assert project.counts() == {f"step{i}": 1 for i in range(1, 7)}  # other parameters: a fresh directory
