"""The API and names a newcomer trips on (issue 16): record.track returns the path, parameter sets
named by short forms, run ids by prefixes, and load/get finding the latest run with a given set."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ORCH

BASE = ("run", "experiment.py", "--params", "params/base.yaml")
SWEEP = ("run", "experiment.py", "--params", "params/sweep.yaml")


# ---------------------------------------------------------------------------------- record.track


def test_track_returns_the_path_it_was_given(tmp_path):
    from orchestrator import Record
    from orchestrator.errors import PlanningError
    from orchestrator.hashing import hash_path

    (tmp_path / "table.csv").write_text("1,2\n")
    record = Record(project_root=tmp_path)
    as_str = str(tmp_path / "table.csv")
    assert record.track(as_str) is as_str
    as_path = tmp_path / "table.csv"
    assert record.track(as_path) is as_path
    assert record.tracked_hash(as_str) == record.tracked_hash(as_path) == hash_path(as_path)[1]
    assert record.files == {"table.csv": hash_path(as_path)[1]}
    # relative to the experiment's directory: joined to it when the stage runs elsewhere
    elsewhere = Record(project_root=tmp_path)
    assert Path.cwd() != tmp_path
    assert elsewhere.track("table.csv") == as_str and elsewhere.track(Path("table.csv")) == as_path
    assert elsewhere.tracked_hash("table.csv") == hash_path(as_path)[1]
    with pytest.raises(PlanningError, match="not tracked"):
        Record(project_root=tmp_path).tracked_hash("table.csv")


def test_track_wraps_the_read_in_a_stage(project, tmp_path):
    project.write("data/table.csv", "1\n2\n3\n")
    project.write("stages/files.py", '''
        from orchestrator import stage, FileReferenceCacher, JsonCacher
        from stages.counting import count

        @stage(outputs=["total"], cachers=[JsonCacher])
        def total(record):
            count("total")
            with open(record.track("data/table.csv")) as f:
                return {"total": sum(int(line) for line in f)}

        @stage(outputs=["ref"], cachers=[FileReferenceCacher])
        def ref(record):
            count("ref")
            return [record.track("data/table.csv")]   # a referenced file, not moved into the store
    ''')
    project.write("experiment.py", '''
        from stages.files import total, ref

        def run(record):
            total(record); ref(record)
    ''')
    project.orch("run", "experiment.py")
    project.orch("get", "total", "-o", "t.json")
    assert json.loads((project.root / "t.json").read_text()) == {"total": 6}
    assert project.counts() == {"total": 1, "ref": 1}
    project.reset_counts()
    project.orch("run", "experiment.py")
    assert project.counts() == {}
    # from another directory: the relative path still names the experiment's file
    project.write("data/table.csv", "10\n")
    env = {k: v for k, v in os.environ.items() if k != "ORCH_CACHE"}
    env["ORCH_COUNTS"] = str(project.counts_file)
    proc = subprocess.run([*ORCH, "run", "proj/experiment.py"], cwd=project.root.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert project.counts() == {"total": 1, "ref": 1}
    assert "file data/table.csv changed" in proc.stdout
    project.orch("get", "total", "-o", "t.json", "--force")
    assert json.loads((project.root / "t.json").read_text()) == {"total": 10}


# ---------------------------------------------------------------------------- run_external launchers


def test_run_external_launchers_as_documented(project):
    """The README's three forms: a .py script under python, a project module with -m, and a program
    run as is (launcher="none", which traces nothing: the stage tracks what it reads)."""
    project.write("external/prep.py", '''
        import sys
        open(sys.argv[1], "w").write("prep")
    ''')
    project.write("tools/__init__.py", "")
    project.write("tools/prep.py", '''
        import sys
        open(sys.argv[1], "w").write("module")
    ''')
    project.write("external/copy.sh", '''
        cp "$1" "$2"
    ''')
    project.write("data/in.txt", "as is")
    project.write("stages/ext.py", '''
        from orchestrator import stage, run_external, JsonCacher
        from stages.counting import count

        def _run(record, name, cmd, **kw):
            out = record.get_path(name)
            run_external([*cmd, out], **kw)
            return open(out).read()

        @stage(outputs=["script"], cachers=[JsonCacher])
        def script(record):
            count("script")
            return _run(record, "a.txt", ["external/prep.py"], launcher="python")

        @stage(outputs=["module"], cachers=[JsonCacher])
        def module(record):
            count("module")
            return _run(record, "b.txt", ["-m", "tools.prep"])

        @stage(outputs=["program"], cachers=[JsonCacher])
        def program(record):
            count("program")
            return _run(record, "c.txt", ["sh", record.track("external/copy.sh"), record.track("data/in.txt")],
                        launcher="none")
    ''')
    project.write("experiment.py", '''
        from stages.ext import script, module, program

        def run(record):
            script(record); module(record); program(record)
    ''')
    project.orch("run", "experiment.py")
    assert project.counts() == {"script": 1, "module": 1, "program": 1}
    for name, value in (("script", "prep"), ("module", "module"), ("program", "as is")):
        project.orch("get", name, "-o", f"{name}.json")
        assert json.loads((project.root / f"{name}.json").read_text()) == value
    project.reset_counts()
    project.write("tools/prep.py", (project.root / "tools/prep.py").read_text() + "# edited\n")
    project.write("data/in.txt", "edited")
    out = project.orch("run", "experiment.py")
    assert project.counts() == {"module": 1, "program": 1}
    assert "file tools/prep.py changed" in out.stdout and "file data/in.txt changed" in out.stdout
