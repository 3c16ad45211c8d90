"""A fully cached `orch run` ends without the interpreter's teardown (orchestrator.exiting), and only
then: a run that computed something, or one whose process still has exit work to do (atexit callbacks,
a thread), exits normally. Observed through the real console script: an object the experiment keeps
alive says when the teardown finalizes it."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ORCH, Project

ORCH_PYTHON = sys.executable

EXPERIMENT = '''
import os
import atexit
import threading
import time
from orchestrator import stage, PickleCacher
from stages.counting import count


class Witness:
    """Alive until the interpreter's teardown finalizes this module."""

    def __del__(self, _write=os.write):
        _write(2, b"teardown ran\\n")


WITNESS = Witness()
if os.environ.get("EXP_ATEXIT"):
    atexit.register(lambda: os.write(2, b"atexit ran\\n"))
if os.environ.get("EXP_THREAD"):  # a non-daemon thread with work left once the main thread is done
    def after_main(_write=os.write):
        while threading.main_thread().is_alive():
            time.sleep(0.01)
        _write(2, b"thread ran\\n")

    threading.Thread(target=after_main).start()


@stage(outputs=["x"], cachers=[PickleCacher])
def make(record):
    count("make")
    return 1


@stage(inputs=["x"], outputs=["y"], cachers=[PickleCacher])
def use(record, x):
    count("use")
    return x + 1


def run(record):
    make(record)
    use(record)
'''


def _project(project: Project) -> Project:
    project.write("experiment.py", EXPERIMENT)
    return project


def test_a_fully_cached_run_skips_the_teardown_and_says_everything(project):
    p = _project(project)
    first = p.orch("run", "experiment.py")
    assert "teardown ran" in first.stderr  # stages ran in this process: the normal exit
    cached = p.orch("run", "experiment.py")
    assert "2 cached" in cached.stdout and cached.returncode == 0
    assert "teardown ran" not in cached.stderr
    assert p.counts() == {"make": 1, "use": 1}
    piped = subprocess.run([*ORCH, "run", "experiment.py", "-q"], cwd=p.root, capture_output=True, text=True,
                           env={**os.environ, "ORCH_COUNTS": str(p.counts_file)})
    assert piped.returncode == 0 and piped.stdout.strip().startswith("2 nodes: 2 cached")  # flushed before the exit


def test_exit_work_of_the_experiment_is_not_skipped(project):
    p = _project(project)
    p.orch("run", "experiment.py")
    with_atexit = p.orch("run", "experiment.py", env={"EXP_ATEXIT": "1"})
    assert "atexit ran" in with_atexit.stderr and "teardown ran" in with_atexit.stderr
    with_thread = p.orch("run", "experiment.py", env={"EXP_THREAD": "1"})
    assert "thread ran" in with_thread.stderr and "teardown ran" in with_thread.stderr


def test_a_run_that_computed_or_failed_exits_normally(project):
    p = _project(project)
    p.orch("run", "experiment.py")
    p.write("experiment.py", EXPERIMENT.replace("return x + 1", "return x + 2"))  # `use` re-runs
    rerun = p.orch("run", "experiment.py")
    assert "1 ran" in rerun.stdout and "teardown ran" in rerun.stderr
    p.write("experiment.py", EXPERIMENT.replace("return x + 1", "raise RuntimeError('boom')"))
    failed = p.orch("run", "experiment.py", check=False)
    assert failed.returncode == 1 and "teardown ran" in failed.stderr


def test_a_caller_of_orch_or_a_tracer_keeps_its_process(project, tmp_path):
    """Code that calls orch's entry point goes on after it returns (a notebook, a test, a profiler
    writing its results at exit): only the `orch` console script itself, untraced, ends early."""
    p = _project(project)
    p.orch("run", "experiment.py")
    driver = tmp_path / "driver.py"  # not the console script: it prints after orch returns
    driver.write_text("import os, sys\nfrom orchestrator.launcher import main\n"
                      "sys.argv = [os.path.join(os.path.dirname(sys.executable), 'orch'), 'run', 'experiment.py']\n"
                      "code = main()\nprint('caller continues', code)\n")
    traced = tmp_path / "bin" / "orch"  # the console script, under a tracer (as coverage or a debugger)
    traced.parent.mkdir()
    traced.write_text("import sys\nsys.settrace(lambda *a: None)\nfrom orchestrator.launcher import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    env = {**os.environ, "ORCH_COUNTS": str(p.counts_file)}
    for script, expected in ((driver, "caller continues 0"), (traced, "2 cached")):
        proc = subprocess.run([ORCH_PYTHON, str(script), "run", "experiment.py"], cwd=p.root, capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stdout + proc.stderr
        assert "teardown ran" in proc.stderr
