"""Fault injection: kill -9 at any moment, then re-run: the run completes, every value is right, and
nothing that had finished is done again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

from conftest import ORCH

CHAIN = '''
import time
from orchestrator import stage, PickleCacher
from stages.counting import count

def _step(name, x, record):
    count(name + "-start")
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


def _project(project, sleep=0.3, mb=20):
    project.write("stages/chain.py", CHAIN)
    project.write("experiment.py", '''
        from stages.chain import s0, s1, s2, s3, final

        def run(record):
            final(s3(s2(s1(s0(record)))))
    ''')
    project.write("params/p.yaml", f"sleep: {sleep}\nmb: {mb}\n")
    return ("run", "experiment.py", "-p", "params/p.yaml")


def _start(project, args):
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file)}
    return subprocess.Popen([*ORCH, *args], cwd=project.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_for(project, name, timeout=30):
    deadline = time.monotonic() + timeout
    while project.counts().get(name, 0) == 0:
        assert time.monotonic() < deadline, f"{name} never ran: {project.counts()}"
        time.sleep(0.01)


def test_kill_between_stages_then_rerun_redoes_nothing_finished(project):
    args = _project(project, sleep=1.0)  # wide margin: the kill must land while s2 sleeps
    proc = _start(project, args)
    _wait_for(project, "s2-start")
    _kill(proc)
    done_before = project.counts()
    assert done_before.get("s1") == 1 and "s2" not in done_before
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
    # every stored entry points at an intact object
    verify = project.orch(*args)
    assert "5 cached" in verify.stdout
    leftovers = [p for p in (project.root / ".orch" / "entries").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # an interrupted entry write never leaves a half-visible entry


def test_kill_while_another_process_waits_on_the_node_lock(project):
    """The lock dies with its holder: a second run waiting on it takes over and completes."""
    args = _project(project, sleep=1.0, mb=1)
    first = _start(project, args)
    _wait_for(project, "s0-start")
    second = _start(project, args)
    time.sleep(0.3)
    _kill(first)
    assert second.wait(timeout=60) == 0
    counts = project.counts()
    assert counts["final"] == 1 and counts["s3"] == 1


def test_ctrl_c_keeps_finished_work_and_records_the_interruption(project):
    args = _project(project, sleep=0.6, mb=1)
    proc = _start(project, args)
    _wait_for(project, "s1-start")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) != 0
    m = project.manifest()
    assert m["status"] == "interrupted"
    assert {n["stage"]: n["status"] for n in m["nodes"]}["s0"] == "ran"
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
