"""User mistakes: a clear message naming the file/stage/artifact/parameter, exit 1, no traceback,
and the cache left intact."""

from __future__ import annotations

import os

from conftest import pipeline

BASE = ("run", "experiment.py", "--params", "params/base.yaml")


def _fails(project, *args, needles=()):
    proc = project.orch(*args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in:\n{proc.stderr}"
    return proc


def test_bad_yaml_names_file_and_line(project):
    pipeline(project)
    project.write("params/bad.yaml", "data:\n  n: 10\n train: [1, 2\n")
    _fails(project, "run", "experiment.py", "-p", "params/bad.yaml", needles=("bad.yaml:3",))


def test_unknown_override_key_suggests_the_real_one(project):
    pipeline(project)
    _fails(project, *BASE, "-S", "train.lrr=0.1", needles=("train.lrr", "train.lr"))


def test_missing_input_producer_names_stage_and_artifact(project):
    pipeline(project)
    project.write("experiment.py", '''
        from stages.data import train

        def run(record):
            train(record)
    ''')
    _fails(project, *BASE, needles=("train", "'data'", "base"))


def test_unknown_parameter_read_names_parameter_and_set(project):
    pipeline(project)
    project.write("stages/data.py", (project.root / "stages/data.py").read_text().replace(
        "record.params.train.lr", "record.params.train.learning_rate"))
    proc = project.orch(*BASE, check=False)
    assert proc.returncode == 1
    assert "train.learning_rate" in proc.stderr and "base" in proc.stderr


def test_wrong_number_of_outputs(project):
    project.write("stages/two.py", '''
        from orchestrator import stage, PickleCacher

        @stage(outputs=["a", "b"], cachers=[PickleCacher, PickleCacher])
        def two(record):
            return 1
    ''')
    project.write("experiment.py", '''
        from stages.two import two

        def run(record):
            two(record)
    ''')
    proc = _fails(project, "run", "experiment.py", needles=("two", "2 outputs", "returned int"))
    assert "a tuple of 2" in proc.stderr
    cache = project.root / ".orch"
    assert project.statuses() == {("two", "default"): "failed"}  # recorded in this cache...
    assert list(cache.rglob("*.pkl")) == []  # ...which holds no output of it
    assert list((cache / "entries").rglob("*.json")) == []


def test_unpicklable_output_names_stage_and_artifact_and_leaves_nothing(project):
    project.write("stages/bad.py", '''
        import threading
        from orchestrator import stage, PickleCacher

        @stage(outputs=["lock"], cachers=[PickleCacher])
        def make_lock(record):
            return threading.Lock()
    ''')
    project.write("experiment.py", '''
        from stages.bad import make_lock

        def run(record):
            make_lock(record)
    ''')
    _fails(project, "run", "experiment.py", needles=("make_lock", "'lock'", "PickleCacher"))
    cache = project.root / ".orch"
    assert project.statuses() == {("make_lock", "default"): "failed"}  # recorded in this cache...
    assert list((cache / "entries").rglob("*.json")) == []  # ...which holds no entry
    assert list(cache.rglob("*.pkl")) == []  # nor the output, stored or half-written
    assert [p for p in (cache / "tmp").rglob("*") if p.is_file()] == []


def test_stage_declaration_error_names_the_function(project):
    project.write("stages/decl.py", '''
        from orchestrator import stage, PickleCacher

        @stage(inputs=["data"], outputs=["x"], cachers=[PickleCacher])
        def uses(record, dataset):
            return 1
    ''')
    project.write("experiment.py", '''
        from stages.decl import uses

        def run(record):
            uses(record)
    ''')
    _fails(project, "run", "experiment.py", needles=("uses", "data", "dataset"))


def test_lambda_or_nested_stage_is_rejected_at_planning(project):
    project.write("experiment.py", '''
        from orchestrator import stage

        def run(record):
            @stage(outputs=["x"])
            def inner(record):
                return 1
            inner(record)
    ''')
    _fails(project, "run", "experiment.py", needles=("inner", "module-level"))


def test_missing_experiment_and_missing_run(project):
    _fails(project, "run", "nope.py", needles=("nope.py",))
    project.write("experiment.py", "x = 1\n")
    _fails(project, "run", "experiment.py", needles=("run(record)",))


def test_error_in_run_wiring_shows_the_users_code(project):
    project.write("experiment.py", '''
        def run(record):
            raise RuntimeError("wiring broke")
    ''')
    _fails(project, "run", "experiment.py", needles=("wiring broke", "experiment.py"))


def test_bad_input_never_damages_the_cache(project):
    pipeline(project)
    project.orch(*BASE)
    project.reset_counts()
    project.write("params/bad.yaml", "extends: nowhere.yaml\n")
    _fails(project, "run", "experiment.py", "-p", "params/bad.yaml", needles=("nowhere.yaml",))
    project.orch(*BASE)
    assert project.counts() == {}


# ------------------------------------------------------------------ failures said once, and logged


def _fragile_stage(project):
    project.write("stages/fragile.py", '''
        from orchestrator import stage, JsonCacher

        def parse(text):
            return int(text)

        @stage(outputs=["n"], cachers=[JsonCacher])
        def fragile(record):
            return parse("twelve")
    ''')
    project.write("experiment.py", '''
        from stages.fragile import fragile

        def run(record):
            fragile(record)
    ''')


def test_in_process_failure_is_said_once_and_its_log_holds_the_traceback(project):
    _fragile_stage(project)
    error = "ValueError: invalid literal for int() with base 10: 'twelve'"
    proc = _fails(project, "run", "experiment.py")
    log = project.root / ".orch" / "runs" / project.manifest()["run_id"] / "logs" / "0-fragile.log"
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("FAILED  fragile [default] after ") and lines[0].endswith(error)
    assert lines[1] == f"          log: {log}"  # the log the FAILED line points to...
    assert lines[2] == f"failed: fragile [default]: {error}"  # the summary: one line
    assert lines[3] == f"tracebacks in the logs: {log.parent}{os.sep} (--debug prints them)"
    assert len(lines) == 4, proc.stderr
    text = log.read_text()  # ...exists and holds the error and the user's traceback
    assert text.startswith("--- fragile[default] failed ---\nTraceback (most recent call last):\n")
    assert 'stages/fragile.py", line 4, in parse' in text and text.rstrip().endswith(error)
    assert "orchestrator" not in text  # the user's frames only
    m = project.manifest()["nodes"][0]  # the manifest keeps the error and traceback
    assert m["error"] == error and "in parse" in m["traceback"]


def test_debug_shows_an_in_process_traceback_once(project):
    _fragile_stage(project)
    proc = project.orch("run", "experiment.py", "--debug", check=False)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert console.count("Traceback (most recent call last)") == 1, console
    assert console.count("return int(text)") == 1 and console.count("in parse") == 1, console
    log_dir = project.root / ".orch" / "runs" / project.manifest()["run_id"] / "logs"
    assert console.count(f"log: {log_dir / '0-fragile.log'}") == 1  # after the traceback
    assert proc.stderr.splitlines()[-1] == f"logs: {log_dir}{os.sep}"


def _no_import_machinery(text: str) -> None:
    assert "<frozen importlib" not in text and f"importlib{os.sep}__init__.py" not in text, text


def test_import_error_in_a_user_module_shows_no_importlib_frames(project):
    project.write("stages/data.py", '''
        from orchestrator import stage, JsonCacher
        import nmupy

        @stage(outputs=["x"], cachers=[JsonCacher])
        def make(record):
            return 1
    ''')
    project.write("experiment.py", '''
        from stages.data import make

        def run(record):
            make(record)
    ''')
    proc = _fails(project, "run", "experiment.py", needles=(
        'experiment.py", line 1, in <module>', 'stages/data.py", line 2, in <module>', "import nmupy",
        "ModuleNotFoundError: No module named 'nmupy'"))
    _no_import_machinery(proc.stderr)


def test_failing_import_inside_a_stage_shows_no_importlib_frames(project):
    project.write("stages/broken.py", "VALUE = undefined_name + 1\n")
    project.write("stages/late.py", '''
        import importlib

        from orchestrator import stage, JsonCacher

        @stage(outputs=["y"], cachers=[JsonCacher])
        def late(record):
            return importlib.import_module("stages.broken").VALUE
    ''')
    project.write("experiment.py", '''
        from stages.late import late

        def run(record):
            late(record)
    ''')
    proc = project.orch("run", "experiment.py", "--debug", check=False)
    assert proc.returncode == 1
    assert 'stages/broken.py", line 1, in <module>' in proc.stderr
    assert "NameError: name 'undefined_name' is not defined" in proc.stderr
    _no_import_machinery(proc.stderr)
    log = project.root / ".orch" / "runs" / project.manifest()["run_id"] / "logs" / "0-late.log"
    _no_import_machinery(log.read_text())
    _no_import_machinery(project.manifest()["nodes"][0]["traceback"])
