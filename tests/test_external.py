"""run_external: command lines, streaming and logs, failures, timeouts, environment hygiene, and
external stages end to end (torchrun with 2 processes, script edits invalidating only their stage)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

from orchestrator import Record, run_external
from orchestrator.errors import ExternalCommandError, OrchError
from orchestrator.executors.external import TAIL_LINES, build_command, clean_env
from orchestrator.record import current_record

PY = sys.executable


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------ command lines


def test_launcher_selection_and_command_lines():
    assert build_command(["external/train.py", "--lr", "0.1"], launcher="python") == \
        [PY, "external/train.py", "--lr", "0.1"]
    assert build_command(["-m", "pkg.train", "--x"], launcher="python") == [PY, "-m", "pkg.train", "--x"]
    assert build_command(["echo", "hi"], launcher="none") == ["echo", "hi"]
    assert build_command(["train.py", "--x"], launcher="torchrun", nproc=2) == \
        [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", "--x"]
    assert build_command(["-m", "pkg.train"], launcher="torchrun", nproc=4, max_restarts=3) == \
        [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "--max_restarts", "3",
         "--module", "pkg.train"]
    assert build_command(["./a.out", "-v"], launcher="torchrun", nproc=2)[-3:] == ["--no-python", "./a.out", "-v"]


def test_multi_node_rendezvous_arguments():
    cmd = build_command(["train.py"], launcher="torchrun", nproc=8, nnodes=4, rdzv_endpoint="node0:29400",
                        rdzv_id="job7", environ={})
    assert "--standalone" not in cmd
    i = cmd.index("--nnodes")
    assert cmd[i:i + 8] == ["--nnodes", "4", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29400",
                            "--rdzv_id", "job7"]
    # from the environment of a batch job
    cmd = build_command(["train.py"], launcher="torchrun", nproc=1, nnodes=2,
                        environ={"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234", "SLURM_JOB_ID": "99"})
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "10.0.0.1:1234" and cmd[cmd.index("--rdzv_id") + 1] == "99"
    with pytest.raises(ExternalCommandError, match="rendezvous endpoint"):
        build_command(["train.py"], launcher="torchrun", nproc=1, nnodes=2, environ={})


def test_default_launcher_follows_the_arguments(tmp_path, capsys):
    s = script(tmp_path, "who.py", "import sys; print('argv', sys.argv[1:])")
    res = run_external([s, "a b", 3, 0.5, Path("p")])  # a .py script: the current interpreter, values str()-ed
    assert res.command == [PY, str(s), "a b", "3", "0.5", "p"]
    assert "argv ['a b', '3', '0.5', 'p']" in capsys.readouterr().out
    res = run_external(["true"])  # anything else runs as is
    assert res.command == ["true"] and res.returncode == 0


def test_bad_commands_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ExternalCommandError, match="not a shell string"):
        run_external("python train.py --lr 0.1")
    with pytest.raises(ExternalCommandError, match=r"argument 2 \(after '--lr'\) is None"):
        run_external(["train.py", "--lr", None])
    with pytest.raises(ExternalCommandError, match="launcher must be one of"):
        run_external(["x.py"], launcher="mpirun")
    with pytest.raises(ExternalCommandError, match="need launcher='torchrun'"):
        run_external(["x.py"], launcher="python", nproc=2)
    with pytest.raises(ExternalCommandError, match="nproc must be a positive integer"):
        run_external(["x.py"], nproc=0)
    with pytest.raises(ExternalCommandError, match="script missing.py not found"):
        run_external(["missing.py"], cwd=tmp_path)
    with pytest.raises(ExternalCommandError, match="cannot start 'no-such-program-xyz'"):
        run_external(["no-such-program-xyz"])
    assert issubclass(ExternalCommandError, OrchError)


# ------------------------------------------------------------------------------- output and failures


def test_output_streams_to_console_and_log_in_order(tmp_path, capsys):
    s = script(tmp_path, "talk.py", """
        import sys
        for i in range(3):
            print("out", i)
            print("err", i, file=sys.stderr)
    """)
    log = tmp_path / "logs" / "node.log"
    res = run_external([s], log=log)
    expected = ["out 0", "err 0", "out 1", "err 1", "out 2", "err 2"]
    assert res.tail == expected
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "$ " + shlex.join([PY, str(s)])  # the command, before its output
    assert out.splitlines()[1:] == expected
    text = log.read_text().splitlines()
    assert text[0] == "$ " + shlex.join([PY, str(s)]) and text[1:] == expected
    run_external([s], log=log, echo=False)  # appended, not overwritten; nothing printed
    assert log.read_text().count("out 2") == 2 and capsys.readouterr().out == ""


def test_large_output_does_not_deadlock(tmp_path):
    s = script(tmp_path, "flood.py", """
        import sys
        chunk = "x" * 1000
        for i in range(2000):  # 2 MB on both pipes, far beyond a pipe buffer
            print(chunk, i)
            print(chunk, i, file=sys.stderr)
    """)
    res = run_external([s], echo=False, timeout=60)
    assert res.tail[-1].endswith(" 1999") and len(res.tail) == TAIL_LINES


def test_failure_carries_command_exit_code_and_log_tail(tmp_path):
    s = script(tmp_path, "fail.py", """
        import sys
        for i in range(80):
            print("line", i)
        print("Traceback: something broke", file=sys.stderr)
        sys.exit(3)
    """)
    log = tmp_path / "fail.log"
    with pytest.raises(ExternalCommandError) as info:
        run_external([s, "--flag", "a b"], log=log, echo=False)
    err = info.value
    cmdline = shlex.join([PY, str(s), "--flag", "a b"])
    assert err.returncode == 3 and not err.timed_out
    assert err.command == [PY, str(s), "--flag", "a b"]
    assert len(err.tail) == TAIL_LINES and err.tail[0] == "line 31" and err.tail[-1] == "Traceback: something broke"
    msg = str(err)
    assert msg.splitlines()[0] == f"external command {s} failed with exit code 3"  # what failed, and how
    assert cmdline in msg and str(log) in msg and "something broke" in log.read_text()
    # echo=False: nothing was shown, so the message carries the last lines (once)
    assert "line 79" in msg and "line 30" not in msg and msg.count("something broke") == 1
    import pickle

    back = pickle.loads(pickle.dumps(err))  # crosses process boundaries (pool workers, MPI ranks) intact
    assert (str(back), back.returncode, back.tail, back.command) == (msg, 3, err.tail, err.command)


def test_streamed_failure_leaves_the_output_out_of_the_message(tmp_path, capsys):
    s = script(tmp_path, "fail.py", """
        print("epoch 1: loss nan", flush=True)
        raise SystemExit(2)
    """)
    log = tmp_path / "fail.log"
    with pytest.raises(ExternalCommandError) as info:
        run_external([s], log=log)
    err = info.value
    assert capsys.readouterr().out.count("epoch 1: loss nan") == 1  # shown live, once
    assert err.tail == ["epoch 1: loss nan"] and "epoch 1: loss nan" in log.read_text()  # and kept
    assert str(err).splitlines() == [f"external command {s} failed with exit code 2",
                                     "  $ " + shlex.join([PY, str(s)]), f"  log: {log}"]


def test_killed_by_a_signal_is_reported(tmp_path):
    s = script(tmp_path, "die.py", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(ExternalCommandError, match="killed by SIGKILL") as info:
        run_external([s], echo=False)
    assert info.value.returncode == -signal.SIGKILL


def test_timeout_kills_the_whole_process_group(tmp_path, monkeypatch):
    monkeypatch.setattr("orchestrator.executors.external.KILL_GRACE_S", 0.5)
    pid_file = tmp_path / "grandchild.pid"
    grandchild_code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(600)\n"
    )
    s = script(tmp_path, "hang.py", f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stubborn, and so is its child: only SIGKILL stops them
        print("started", flush=True)
        subprocess.Popen([sys.executable, "-c", {grandchild_code!r}, {str(pid_file)!r}])
        time.sleep(60)
    """)
    real_popen = subprocess.Popen

    class StartedPopen(real_popen):
        """run_external's timeout is a proc.wait(timeout): its clock starts here once the whole group
        is up ("started" printed, the grandchild ignoring SIGTERM and its pid written)."""

        def wait(self, timeout=None):
            if timeout is not None:
                wait_for(pid_file.exists, "hang.py's grandchild to start and write its pid")
            return super().wait(timeout)

    monkeypatch.setattr(subprocess, "Popen", StartedPopen)
    with pytest.raises(ExternalCommandError, match=r"timed out after 2s; its process group was killed") as info:
        run_external([s], timeout=2, echo=False)
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    assert info.value.timed_out and info.value.tail == ["started"]
    grandchild = int(pid_file.read_text())
    try:
        # SIGTERM is ignored in the whole group: only the group's SIGKILL ends the grandchild (then reaped
        # by its new parent); it would otherwise sleep on for 10 minutes
        wait_for(lambda: not alive(grandchild), f"the grandchild (pid {grandchild}) to be gone", timeout=30)
        assert not alive(grandchild), "the grandchild survived the timeout"
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


# ------------------------------------------------------------------------------------- environment


def test_child_environment_is_scrubbed_of_mpi_and_torchrun_identity(tmp_path, monkeypatch):
    inherited = {
        "OMPI_COMM_WORLD_RANK": "3", "OMPI_MCA_ess_base_jobid": "1", "PMI_RANK": "3", "PMI_FD": "7",
        "PMIX_RANK": "3", "MPI_LOCALRANKID": "1", "HYDRA_CONTROL_FD": "9", "SLURM_PROCID": "3",
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
        "ROLE_RANK": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x",
    }
    kept = {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_ID": "42", "MPICH_GPU_SUPPORT_ENABLED": "1",
            "I_MPI_PIN": "0", "MY_SETTING": "yes"}
    for k, v in {**inherited, **kept}.items():
        monkeypatch.setenv(k, v)
    s = script(tmp_path, "env.py", "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))")
    run_external([s, tmp_path / "env.json"], echo=False)
    child = json.loads((tmp_path / "env.json").read_text())
    assert not set(inherited) & set(child)
    assert {k: child.get(k) for k in kept} == kept
    assert child["PYTHONUNBUFFERED"] == "1"
    # env= adds, overrides (CUDA_VISIBLE_DEVICES) and removes (None)
    run_external([s, tmp_path / "env.json"], env={"CUDA_VISIBLE_DEVICES": "0", "EXTRA": 5, "MY_SETTING": None},
                 echo=False)
    child = json.loads((tmp_path / "env.json").read_text())
    assert child["CUDA_VISIBLE_DEVICES"] == "0" and child["EXTRA"] == "5" and "MY_SETTING" not in child
    # the live-output default is orch's, not the user's: env= removes it too (a script that buffers on purpose)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    run_external([s, tmp_path / "env.json"], env={"PYTHONUNBUFFERED": None}, echo=False)
    assert "PYTHONUNBUFFERED" not in json.loads((tmp_path / "env.json").read_text())


def test_clean_env_is_pure():
    base = {"RANK": "1", "PATH": "/bin", "OMPI_X": "1"}
    assert clean_env(base, {"A": "1"}) == {"PATH": "/bin", "A": "1"}
    assert base == {"RANK": "1", "PATH": "/bin", "OMPI_X": "1"}


# ----------------------------------------------------------------------------------- stage tracing


def test_script_is_traced_in_the_running_stage_record(tmp_path):
    s = script(tmp_path, "external/job.py", "print('ok')")
    explicit = Record(params={}, project_root=tmp_path)
    run_external(["external/job.py"], record=explicit, echo=False)  # relative to the project root
    assert list(explicit.files) == ["external/job.py"]
    implicit = Record(params={}, project_root=tmp_path)
    token = current_record.set(implicit)  # what the task does around a stage call
    try:
        run_external([s], echo=False)
    finally:
        current_record.reset(token)
    assert implicit.files == explicit.files
    s.write_text("print('changed')\n")
    changed = Record(params={}, project_root=tmp_path)
    run_external(["external/job.py"], record=changed, echo=False)
    assert changed.files["external/job.py"] != explicit.files["external/job.py"]


# ------------------------------------------------------------------------- external stages end to end

TORCHRUN_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank}/{world} sees {value.item()}", flush=True)
if rank == 0:
    json.dump({"world": world, "sum": value.item(), "env_rank_is_child": os.environ["RANK"] == "0"},
              open(sys.argv[1], "w"))
dist.destroy_process_group()
"""

TORCHRUN_STAGES = """
import json
from orchestrator import stage, run_external, JsonCacher
from stages.counting import count

@stage(outputs=["result"], cachers=[JsonCacher], ignore=["job.nproc"])
def distributed(record):
    count("distributed")
    out = record.get_path("result.json")
    run_external(["external/ddp.py", out], nproc=record.params.job.nproc)
    return json.load(open(out))
"""


def test_torchrun_stage_with_two_processes_end_to_end(project):
    project.write("external/ddp.py", TORCHRUN_SCRIPT)
    project.write("stages/dist.py", TORCHRUN_STAGES)
    project.write("experiment.py", """
        from stages.dist import distributed

        def run(record):
            distributed(record)
    """)
    project.write("params/p.yaml", "job:\n  nproc: 2\n")
    out = project.orch("run", "experiment.py", "--params", "params/p.yaml")
    assert "--nproc_per_node 2 external/ddp.py" in out.stdout
    assert "rank 0/2 sees 3.0" in out.stdout and "rank 1/2 sees 3.0" in out.stdout
    node = project.manifest()["nodes"][0]
    assert node["status"] == "ran" and "external/ddp.py" in node["files"]
    log = next((project.root / ".orch" / "runs" / project.manifest()["run_id"] / "logs").glob("*distributed*.log"))
    assert "rank 1/2 sees 3.0" in log.read_text()
    from orchestrator import load

    assert load("result", cache=project.root / ".orch") == {"world": 2, "sum": 3.0, "env_rank_is_child": True}
    # cached, and nproc (ignored: it does not change the result) does not invalidate it
    project.orch("run", "experiment.py", "--params", "params/p.yaml", "-S", "job.nproc=1")
    assert project.counts() == {"distributed": 1}


EDIT_STAGES = """
import json
from orchestrator import stage, run_external, JsonCacher
from stages.counting import count

@stage(outputs=["numbers"], cachers=[JsonCacher])
def make(record):
    count("make")
    return list(range(record.params.n))

@stage(inputs=["numbers"], outputs=["total"], cachers=[JsonCacher])
def external_sum(record, numbers):
    count("external_sum")
    out = record.get_path("total.json")
    run_external(["external/total.py", json.dumps(numbers), out])
    return json.load(open(out))

@stage(inputs=["total"], outputs=["report"], cachers=[JsonCacher])
def report(record, total):
    count("report")
    return {"total": total}

@stage(outputs=["other"], cachers=[JsonCacher])
def unrelated(record):
    count("unrelated")
    return 1
"""


def _edit_project(project, script: str) -> tuple[str, ...]:
    """make -> external_sum (runs external/total.py) -> report, and an unrelated stage."""
    project.write("external/total.py", script)
    project.write("stages/ext.py", EDIT_STAGES)
    project.write("experiment.py", """
        from stages.ext import make, external_sum, report, unrelated

        def run(record):
            report(external_sum(make(record)))
            unrelated(record)
    """)
    project.write("params/p.yaml", "n: 5\n")
    run = ("run", "experiment.py", "--params", "params/p.yaml")
    project.orch(*run)
    return run


def test_editing_the_external_script_invalidates_only_its_stage(project):
    run = _edit_project(project, """
        import json, sys
        json.dump(sum(json.loads(sys.argv[1])), open(sys.argv[2], "w"))
    """)
    assert project.counts() == {"make": 1, "external_sum": 1, "report": 1, "unrelated": 1}
    project.reset_counts()
    project.orch(*run)
    assert project.counts() == {}
    # same result: only the external stage re-runs (its output is unchanged, so report stays cached)
    project.write("external/total.py", """
        import json, sys
        numbers = json.loads(sys.argv[1])
        json.dump(sum(numbers), open(sys.argv[2], "w"))
    """)
    out = project.orch(*run)
    assert project.counts() == {"external_sum": 1}
    assert "file external/total.py changed" in out.stdout
    project.reset_counts()
    # a different result: the external stage and what consumes it
    project.write("external/total.py", """
        import json, sys
        json.dump(2 * sum(json.loads(sys.argv[1])), open(sys.argv[2], "w"))
    """)
    project.orch(*run)
    assert project.counts() == {"external_sum": 1, "report": 1}
    from orchestrator import load

    assert load("report", cache=project.root / ".orch") == {"total": 20}


def test_editing_code_the_external_script_imports_invalidates_its_stage(project):
    """The script's own imports from the project (its model, its helpers) are traced with it."""
    project.write("external/mathutil.py", """
        def total(numbers):
            return sum(numbers)
    """)
    run = _edit_project(project, """
        import json, sys
        from mathutil import total
        json.dump(total(json.loads(sys.argv[1])), open(sys.argv[2], "w"))
    """)
    project.reset_counts()
    project.write("external/mathutil.py", """
        def total(numbers):
            return 3 * sum(numbers)
    """)
    out = project.orch(*run)
    assert project.counts() == {"external_sum": 1, "report": 1}
    assert "file external/mathutil.py changed" in out.stdout


def _failing_external_stage(project, echo: bool = True) -> None:
    project.write("external/boom.py", """
        print("loading data", flush=True)

        def allocate(batch):
            raise RuntimeError(f"CUDA out of memory (pretend, batch {batch})")

        allocate(64)
    """)
    project.write("stages/boom.py", f"""
        from orchestrator import stage, run_external, JsonCacher

        @stage(outputs=["x"], cachers=[JsonCacher])
        def boom(record):
            run_external(["external/boom.py", "--batch", 64], echo={echo})
            return 1
    """)
    project.write("experiment.py", """
        from stages.boom import boom

        def run(record):
            boom(record)
    """)


def _node_log(project, node: str) -> Path:
    return project.root / ".orch" / "runs" / project.manifest()["run_id"] / "logs" / f"{node}.log"


def test_external_failure_is_said_once(project):
    """The child's output streams live (its traceback with it); the FAILED line then says what failed
    and where the log is, and the summary one line: its traceback is not repeated."""
    _failing_external_stage(project)
    proc = project.orch("run", "experiment.py", check=False)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert console.count("CUDA out of memory (pretend, batch 64)") == 1, console
    assert console.count("Traceback (most recent call last)") == 1, console  # the child's own, streamed
    assert console.count("loading data") == 1
    assert "Traceback" not in proc.stderr  # no orch traceback without --debug
    log = _node_log(project, "0-boom")
    failed = proc.stderr.splitlines()
    assert failed[0].startswith("FAILED  boom [default] after ")
    assert failed[0].endswith("s: ExternalCommandError: external command external/boom.py failed with exit code 1")
    assert "external/boom.py --batch 64" in failed[1] and failed[2] == f"          log: {log}"
    assert "failed: boom [default]: ExternalCommandError: external command external/boom.py failed with exit code 1" \
        in failed
    assert len(failed) == 5, proc.stderr  # FAILED + command + log, the summary line, where the logs are
    text = log.read_text()  # the output, then orch's traceback of the stage
    assert "CUDA out of memory (pretend, batch 64)" in text and "--- boom[default] failed ---" in text
    assert 'run_external(["external/boom.py", "--batch", 64]' in text
    m = project.manifest()
    assert m["nodes"][0]["status"] == "failed" and "exit code 1" in m["nodes"][0]["error"]
    assert 'run_external(["external/boom.py"' in m["nodes"][0]["traceback"]


def test_external_failure_without_echo_shows_the_tail_once(project):
    _failing_external_stage(project, echo=False)
    proc = project.orch("run", "experiment.py", check=False)
    assert proc.returncode == 1
    assert "loading data" not in proc.stdout  # echo=False: nothing streamed...
    console = proc.stdout + proc.stderr
    assert console.count("CUDA out of memory (pretend, batch 64)") == 1, console  # ...so the tail, once
    assert console.count("| loading data") == 1 and " lines of its output:" in proc.stderr
    assert "CUDA out of memory" in _node_log(project, "0-boom").read_text()


def test_external_failure_with_debug_shows_the_stage_traceback_once(project):
    _failing_external_stage(project)
    proc = project.orch("run", "experiment.py", "--debug", check=False)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert console.count('run_external(["external/boom.py", "--batch", 64]') == 1, console  # orch's, once
    assert console.count("CUDA out of memory (pretend, batch 64)") == 1, console  # the child's, streamed
    assert console.count("Traceback (most recent call last)") == 2  # the child's and the stage's
    assert console.count(str(_node_log(project, "0-boom"))) == 1


def test_a_second_ctrl_c_while_the_command_is_stopped_leaves_nothing_running(tmp_path):
    """Ctrl-C, then another during the grace period orch gives the command to stop: the second
    interrupt leaves orch at once, and the guard (executors/reaper.py) still ends the command's group."""
    pid_file = tmp_path / "child.pid"
    child = script(tmp_path, "stubborn.py", f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pid_file) + '.tmp'!r}, "w").write(str(os.getpid()))
        os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r})
        time.sleep(600)
    """)
    driver = script(tmp_path, "driver.py", f"""
        import os, signal, threading, time
        from orchestrator import run_external

        def interrupt_twice():
            while not os.path.exists({str(pid_file)!r}):
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # orch is now waiting for the command to end after its SIGTERM
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_twice, daemon=True).start()
        try:
            run_external([{str(child)!r}], echo=False)
        except KeyboardInterrupt:
            os._exit(7)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(driver)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 7, out.stderr
    pid = int(pid_file.read_text())
    try:
        wait_for(lambda: not alive(pid), f"the stubborn command (pid {pid}) to be killed by the guard", timeout=30)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_process_a_stage_forks_still_dies_of_sigterm(project):
    """`orch run` turns SIGTERM into an interrupt; a process forked by a stage (multiprocessing, a
    DataLoader worker) inherits the handler but must still die of SIGTERM, not raise in the child."""
    project.write("experiment.py", '''
        import multiprocessing, time
        from orchestrator import stage, JsonCacher

        @stage(outputs=["codes"], cachers=[JsonCacher])
        def fork(record):
            codes = []
            for _ in range(5):  # terminated at once: the signal may land while the child is still being forked
                p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
                p.start()
                p.terminate()
                p.join(30)
                codes.append(p.exitcode)
            return codes

        def run(record):
            fork(record)
    ''')
    out = project.orch("run", "experiment.py")
    assert "Traceback" not in out.stderr
    project.orch("get", "codes", "-o", str(project.root / "codes.json"))
    assert json.loads((project.root / "codes.json").read_text()) == [-signal.SIGTERM] * 5
