"""Progress while `orch run` works (runs/progress.py, runs/liveterm.py), through the real CLI.

Stages that take long here wait for a release file the test creates once it has seen what it looks
for in the output (never a fixed sleep); thresholds are made small through the environment. The
terminal tests run orch in a pseudo-terminal and replay what it wrote on a minimal terminal
(`Screen`): the final screen must hold the run's output in order, whole lines, and no live area.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

import pytest
from conftest import ORCH, wait_for

FAST = {"ORCH_PROGRESS_AFTER": "0.2", "ORCH_PROGRESS_EVERY": "0.3"}

SLOW = '''
import os
import sys
from orchestrator import stage, JsonCacher
from stages.counting import count, wait_until

HERE = os.path.dirname(os.environ["ORCH_COUNTS"])

def say(line):
    """One write per line: print() writes the text and the newline apart when Python runs unbuffered
    (PYTHONUNBUFFERED), and lines of processes printing at once would interleave on any terminal."""
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

def released(name):
    return os.path.exists(os.path.join(HERE, "release-" + name))

@stage(outputs=["model"], cachers=[JsonCacher])
def train(record):
    count("train")
    lr = record.params.train.lr
    say(f"train {lr}: hello from the stage")
    record.log(step=3, loss=lr)
    wait_until(lambda: released(f"train-{lr}"), f"the test to release train {lr}")
    say(f"train {lr}: bye")
    return {"loss": lr}

@stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
def evaluate(record, model):
    count("evaluate")
    return {"score": model["loss"] + 1}
'''


def slow_project(p, sweep: bool = False):
    p.write("stages/slow.py", SLOW)
    p.write("experiment.py", '''
        from stages.slow import train, evaluate

        def run(record):
            evaluate(train(record))
    ''')
    p.write("params/base.yaml", "train:\n  lr: 0.5\n")
    p.write("params/sweep.yaml", "extends: base.yaml\nsweep:\n  train.lr: [0.25, 0.75]\n")
    return ("run", "experiment.py", "-p", "params/sweep.yaml" if sweep else "params/base.yaml")


def release(p, name: str) -> None:
    (p.root / f"release-{name}").write_text("")


def orch_env(p, extra: dict | None = None) -> dict:
    """Project.orch's environment (the inherited one, PYTHONPATH included) for a streamed run."""
    env = {**os.environ, "ORCH_COUNTS": str(p.counts_file), "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}
    env.pop("ORCH_CACHE", None)
    return env


class Streamed:
    """A command whose output is read while it runs (stdout and stderr, or one terminal)."""

    def __init__(self, cmd: list[str], cwd, env: dict, terminal: bool = False):
        self.out, self.err = bytearray(), bytearray()
        self._readers = []
        if terminal:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            self.proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "TERM": "xterm"}, stdin=slave, stdout=slave,
                                         stderr=slave, start_new_session=True)
            os.close(slave)
            self._read(master, self.out)
        else:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
            self._read(self.proc.stdout.fileno(), self.out)
            self._read(self.proc.stderr.fileno(), self.err)
        STARTED.append(self)

    def _read(self, fd: int, into: bytearray) -> None:
        def pump():
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # a pseudo-terminal whose other side is closed
                    data = b""
                if not data:
                    break
                into.extend(data)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        self._readers.append(t)

    @property
    def stdout(self) -> str:
        return bytes(self.out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self.err).decode("utf-8", "replace")

    def wait_for_output(self, pattern: str, state: str, stream: str = "stdout") -> re.Match:
        def seen():
            exited = self.proc.poll() is not None
            if exited:
                for t in self._readers:
                    t.join(timeout=10)
            match = re.search(pattern, getattr(self, stream))
            if match is None and exited:
                raise AssertionError(f"orch exited ({self.proc.returncode}) before {state}:\n{self.stdout}{self.stderr}")
            return match

        return wait_for(seen, state, detail=lambda: self.stdout[-2000:])

    def kill(self) -> None:
        """A test that failed half-way: its orch (and the workers waiting for a release) must not linger."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return code


STARTED: list[Streamed] = []


@pytest.fixture(autouse=True)
def _no_leftover_runs():
    yield
    while STARTED:
        STARTED.pop().kill()


def start_orch(p, *args: str, env: dict | None = None, terminal: bool = False) -> Streamed:
    return Streamed([*ORCH, *args], p.root, orch_env(p, env), terminal)


class Screen:
    """What a terminal shows after a byte stream, for the codes the live area uses: text, \\r, \\n,
    ESC[nA (up), ESC[J (clear to the end of the screen), ESC[K (clear to the end of the line).
    Unbounded height: moving up never goes past the lines the area drew."""

    CODE = re.compile(r"\x1b\[(\d*)([AJK])")

    def __init__(self, data: bytes):
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        text = data.decode("utf-8", "replace")
        i = 0
        while i < len(text):
            m = self.CODE.match(text, i)
            if m:
                self._code(int(m.group(1) or 1), m.group(2))
                i = m.end()
                continue
            self._char(text[i])
            i += 1

    def _code(self, n: int, code: str) -> None:
        if code == "A":
            self.row = max(0, self.row - n)
        elif code == "J":
            del self.lines[self.row][self.col:]
            del self.lines[self.row + 1:]
        else:
            del self.lines[self.row][self.col:]

    def _char(self, c: str) -> None:
        if c == "\r":
            self.col = 0
        elif c == "\n":
            self.row += 1
            while len(self.lines) <= self.row:
                self.lines.append([])
        else:
            line = self.lines[self.row]
            line.extend(" " * (self.col - len(line)))
            if self.col < len(line):
                line[self.col] = c
            else:
                line.append(c)
            self.col += 1

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


# -- not a terminal: plain lines ---------------------------------------------------------------------------

def test_a_slow_stage_gets_a_started_line_and_heartbeats_with_its_latest_metric(project):
    args = slow_project(project)
    run = start_orch(project, *args, env=FAST)
    run.wait_for_output(r"started train \[base\] \d+s ago\n", "the started line of train")
    beat = run.wait_for_output(r"progress \d+s: 0/2 done, 1 running, 1 pending; running: train \[base\] (\d+)s"
                               r"  step 3  loss=0.5\n", "a heartbeat naming train with its metric")
    release(project, "train-0.5")
    assert run.finish() == 0, run.stdout + run.stderr
    out = run.stdout
    assert "\x1b" not in out + run.stderr  # no ANSI codes in a log
    assert "ran     train [base]" in out and "2 nodes: 2 ran" in out
    assert out.index(beat.group(0)) < out.index("ran     train [base]")
    assert out.count("started train [base]") == 1  # once per node, heartbeats repeat
    # The next run knows how long train took on this parameter set: the started line says it.
    project.write("params/base.yaml", "train:\n  lr: 0.125\n")
    again = start_orch(project, *args, env=FAST)
    again.wait_for_output(r"started train \[base\] \d+s ago; usually (<1s|~[0-9hms]+)\n", "an estimate")
    release(project, "train-0.125")
    assert again.finish() == 0, again.stdout + again.stderr


def test_heartbeats_with_parallel_workers_name_every_running_node(project):
    args = slow_project(project, sweep=True)
    run = start_orch(project, *args, "--parallel", "2", env=FAST)
    for lr in ("0.25", "0.75"):  # each line shows its node's own metric, read from its worker's stream
        run.wait_for_output(rf"progress [^\n]*running[^\n]*train \[sweep\[train.lr={lr}\]\] \d+s  step 3  "
                            rf"loss={lr}", f"a heartbeat with train lr={lr} and its metric")
    run.wait_for_output(r"progress [^\n]*: 0/4 done, 2 running, 2 pending", "both trains running at once")
    assert "started train [sweep[train.lr=0.25]]" in run.stdout
    assert "started train [sweep[train.lr=0.75]]" in run.stdout
    release(project, "train-0.25")
    release(project, "train-0.75")
    assert run.finish() == 0, run.stdout + run.stderr
    assert "\x1b" not in run.stdout + run.stderr
    assert "4 nodes: 4 ran" in run.stdout


THREADS = '''
import sys, threading
started = []
_start = threading.Thread.start
def start(self):
    started.append(self.name)
    return _start(self)
threading.Thread.start = start
from orchestrator.cli import main
try:
    main(sys.argv[1:], prog_name="orch")
except SystemExit as e:
    code = e.code
print("threads:", " ".join(started), file=sys.stderr)
print("modules:", " ".join(sorted(m for m in sys.modules if m.startswith("orchestrator.runs."))), file=sys.stderr)
sys.exit(code)
'''


def test_progress_costs_nothing_unless_a_node_runs(project):
    """A cached run starts no display thread, reads no past runs and imports no terminal code; nor do
    --quiet and --no-progress runs. The first run, which runs something, is the control."""
    from conftest import pipeline

    pipeline(project)
    env = {"ORCH_PROGRESS_AFTER": "0", "ORCH_PROGRESS_EVERY": "0.01"}

    def orch(*args):
        proc = subprocess.run([sys.executable, "-c", THREADS, "run", "experiment.py", "-p", "params/base.yaml", *args],
                              cwd=project.root, env=orch_env(project, env), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        threads = proc.stderr.split("threads:")[1].split("\n")[0].split()
        modules = proc.stderr.split("modules:")[1].split()
        return proc.stdout, threads, modules

    out, threads, modules = orch()
    assert "orch-progress" in threads and "3 nodes: 3 ran" in out
    out, threads, modules = orch()
    assert "3 nodes: 3 cached" in out
    assert "orch-progress" not in threads
    assert not {"orchestrator.runs.progressview", "orchestrator.runs.eta", "orchestrator.runs.liveterm"} & set(modules)
    assert "progress" not in out and "started" not in out
    for flags in (["-S", "train.lr=0.3", "--quiet"], ["-S", "train.lr=0.4", "--no-progress"]):
        out, threads, _ = orch(*flags)
        assert "orch-progress" not in threads and "progress" not in out, flags
    assert project.counts()["train"] == 3  # those runs did run something


def test_a_progress_setting_that_is_not_seconds_is_refused(project):
    from conftest import pipeline

    pipeline(project)
    proc = project.orch("run", "experiment.py", "-p", "params/base.yaml", check=False,
                        env={"ORCH_PROGRESS_EVERY": "soon"})
    assert proc.returncode == 1
    assert "ORCH_PROGRESS_EVERY='soon': expected a number of seconds, more than 0" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- a terminal: the live area -------------------------------------------------------------------------------

EXTERNAL = '''
import os, sys, time
from orchestrator import metrics

print("evaluate: external output line", flush=True)
metrics.log(step=5, acc=0.5)
while not os.path.exists(os.path.join(sys.argv[1], "release-evaluate")):
    time.sleep(0.01)
print("evaluate: external done", flush=True)
'''


def test_the_live_area_shows_running_nodes_below_the_output_and_leaves_it_intact(project):
    args = slow_project(project)
    project.write("external/evaluate.py", EXTERNAL)
    project.write("stages/slow.py", SLOW.replace('''    count("evaluate")''', '''    count("evaluate")
    from orchestrator import run_external
    run_external(["external/evaluate.py", HERE])'''))
    run = start_orch(project, *args, terminal=True)
    run.wait_for_output(r"orch: 0/2 done, 1 running, 1 pending, \d+s\r?\n  train \[base\] \d+s  step 3  loss=0.5",
                        "the live area with train, its elapsed time and metric")
    run.wait_for_output(r"train 0.5: hello from the stage", "the stage's own output")
    release(project, "train-0.5")
    # run_external's streamed output goes above the area too; the script's metric shows in it
    run.wait_for_output(r"evaluate: external output line", "the external command's output")
    run.wait_for_output(r"orch: 1/2 done, 1 running, 0 pending, \d+s[^\n]*\r?\n  evaluate \[base\] \d+s[^\n]*"
                        r"step 5  acc=0.5", "the area with evaluate and the metric its script logged")
    release(project, "evaluate")
    assert run.finish() == 0, run.stdout
    screen = [line for line in Screen(bytes(run.out)).text() if line]
    expected = ["train 0.5: hello from the stage", "train 0.5: bye", "ran     train [base]",
                "evaluate: external output line", "evaluate: external done", "ran     evaluate [base]",
                "2 nodes: 2 ran"]
    positions = [next((i for i, line in enumerate(screen) if line.startswith(e)), None) for e in expected]
    assert None not in positions and positions == sorted(positions), screen
    assert not [line for line in screen if line.startswith(("orch: ", "  train [", "  evaluate ["))], repr(bytes(run.out))
    assert screen[-1].startswith("2 nodes: 2 ran"), screen


def test_the_live_area_with_parallel_workers_keeps_their_output_above_it(project):
    args = slow_project(project, sweep=True)
    run = start_orch(project, *args, "-j", "2", terminal=True)
    run.wait_for_output(r"orch: 0/4 done, 2 running, 2 pending, \d+s\r?\n  train \[sweep\[train.lr=0\.\d+\]\] \d+s  "
                        r"step 3  loss=0\.\d+\r?\n  train \[sweep", "both trains in the area")
    release(project, "train-0.25")
    release(project, "train-0.75")
    assert run.finish() == 0, run.stdout
    screen = [line for line in Screen(bytes(run.out)).text() if line]
    for lr in ("0.25", "0.75"):  # what the workers printed, whole lines
        assert f"train {lr}: hello from the stage" in screen and f"train {lr}: bye" in screen, screen
    assert not [line for line in screen if line.startswith(("orch: ", "  train ["))], repr(bytes(run.out))
    assert screen[-1].startswith("4 nodes: 4 ran"), screen


# -- a display that fails says so once; the run goes on ------------------------------------------------

FAULTY = '''
import sys
from orchestrator.runs import progressview

def boom(*args, **kwargs):
    raise RuntimeError("boom")

setattr(progressview.View, sys.argv.pop(1), boom)
from orchestrator.cli import main
main(sys.argv[1:], prog_name="orch")
'''
STOPPED = "orch: the progress display stopped (RuntimeError: boom); the run goes on without it"


def test_a_failing_heartbeat_is_said_once_and_the_run_goes_on(project):
    args = slow_project(project)
    run = Streamed([sys.executable, "-c", FAULTY, "beat", *args], project.root, orch_env(project, FAST))
    run.wait_for_output(re.escape(STOPPED), "the display's failure, on stderr", stream="stderr")
    release(project, "train-0.5")
    assert run.finish() == 0, run.stdout + run.stderr
    assert run.stderr.count("progress display stopped") == 1
    assert "ran     train [base]" in run.stdout and "2 nodes: 2 ran" in run.stdout


def test_a_failing_live_area_is_said_once_and_the_output_goes_on(project):
    args = slow_project(project)
    run = Streamed([sys.executable, "-c", FAULTY, "lines", *args], project.root, orch_env(project), terminal=True)
    run.wait_for_output(re.escape(STOPPED), "the area's failure")
    release(project, "train-0.5")
    assert run.finish() == 0, run.stdout
    screen = [line for line in Screen(bytes(run.out)).text() if line]
    assert screen.count(STOPPED) == 1, screen
    for line in ("train 0.5: hello from the stage", "train 0.5: bye", "ran     train [base]"):
        assert any(s.startswith(line) for s in screen), screen
    assert screen[-1].startswith("2 nodes: 2 ran"), screen
