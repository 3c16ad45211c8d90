"""A fully cached `orch run` ends without the interpreter's teardown (orchestrator.exiting), and only
then: a run that computed something, or one whose process still has exit work to do (atexit callbacks,
a thread, an open file, a compiled library, a caller), exits normally. Observed through the real
console script: an object the experiment keeps alive says when the teardown finalizes it."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ORCH, Project

EXPERIMENT = '''
import os
import sys
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
if os.environ.get("EXP_OPEN_FILE"):  # written at import, never closed: the teardown flushes it
    LOG = open("import.log", "a")
    LOG.write("imported\\n")
if os.environ.get("EXP_EXTENSION"):  # a compiled module from outside Python's library
    import _imp
    import types

    fake = types.ModuleType("fake_ext")
    fake.__file__ = "/opt/lib/fake_ext" + _imp.extension_suffixes()[0]
    sys.modules["fake_ext"] = fake
if os.environ.get("EXP_PARTIAL_LINE"):  # stderr is line-buffered: this stays in its buffer
    sys.stderr.write("partial line at import")


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


def _env(p: Project, **extra: str) -> dict:
    env = {**os.environ, "ORCH_COUNTS": str(p.counts_file), **extra}
    env.pop("PYTHONUNBUFFERED", None)  # buffering as users have it
    return env


def test_a_fully_cached_run_skips_the_teardown_and_flushes_its_output(project):
    p = _project(project)
    first = p.orch("run", "experiment.py")
    assert "teardown ran" in first.stderr  # stages ran in this process: the normal exit
    cached = subprocess.run([*ORCH, "run", "experiment.py"], cwd=p.root, capture_output=True, text=True,
                            env=_env(p, EXP_PARTIAL_LINE="1"))
    assert cached.returncode == 0 and "2 cached" in cached.stdout
    assert "teardown ran" not in cached.stderr
    assert "partial line at import" in cached.stderr  # flushed before the exit
    assert p.counts() == {"make": 1, "use": 1}


def test_exit_work_of_the_experiment_is_not_skipped(project):
    p = _project(project)
    p.orch("run", "experiment.py")
    cases = {"EXP_ATEXIT": "atexit ran", "EXP_THREAD": "thread ran", "EXP_OPEN_FILE": None, "EXP_EXTENSION": None}
    for variable, said in cases.items():
        proc = subprocess.run([*ORCH, "run", "experiment.py"], cwd=p.root, capture_output=True, text=True,
                              env=_env(p, **{variable: "1"}))
        assert proc.returncode == 0 and "2 cached" in proc.stdout, proc.stderr
        assert "teardown ran" in proc.stderr, variable
        if said:
            assert said in proc.stderr
    assert (p.root / "import.log").read_text() == "imported\n"


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
    """Code that calls orch's entry point goes on after it returns (a notebook, a test, runpy, a
    profiler writing its results at exit): only the `orch` console script itself, started by the
    interpreter and untraced, ends early."""
    p = _project(project)
    p.orch("run", "experiment.py")
    script = ORCH[-1] if ORCH[-1].endswith("orch") else None
    driver = tmp_path / "driver.py"  # calls orch's main(), then goes on
    driver.write_text("import os, sys\nfrom orchestrator.launcher import main\n"
                      "sys.argv = [os.path.join(os.path.dirname(sys.executable), 'orch'), 'run', 'experiment.py']\n"
                      "code = main()\nprint('caller continues', code)\n")
    traced = tmp_path / "bin" / "orch"  # the console script, under a tracer (as coverage or a debugger)
    traced.parent.mkdir()
    traced.write_text("import sys\nsys.settrace(lambda *a: None)\nfrom orchestrator.launcher import console\n"
                      "if __name__ == '__main__':\n    sys.exit(console())\n")
    runs = [([sys.executable, str(driver)], "caller continues 0", {}),
            ([sys.executable, str(traced), "run", "experiment.py"], "2 cached", {}),
            ([*ORCH, "run", "experiment.py"], "2 cached", {"PYTHONINSPECT": "1"})]  # a prompt after the script
    if script:  # the console script itself, but through runpy or kept interactive
        runpy_driver = tmp_path / "runpy_driver.py"
        runpy_driver.write_text(f"import runpy, sys\nsys.argv = [{script!r}, 'run', 'experiment.py']\n"
                                f"try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
                                "print('caller continues')\n")
        runs += [([sys.executable, str(runpy_driver)], "caller continues", {}),
                 ([sys.executable, "-i", script, "run", "experiment.py"], "2 cached", {})]
    for argv, expected, extra in runs:
        proc = subprocess.run(argv, cwd=p.root, capture_output=True, text=True, env=_env(p, **extra),
                              stdin=subprocess.DEVNULL)
        assert expected in proc.stdout, (argv, proc.stdout, proc.stderr)  # (an interactive prompt's exit code is its own)
        assert "teardown ran" in proc.stderr, argv
