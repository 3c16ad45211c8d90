"""The API and names a newcomer trips on (issue 16): record.track returns the path, parameter sets
named by short forms, run ids by prefixes, and load/get finding the latest run with a given set."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
from conftest import ORCH, pipeline

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


# --------------------------------------------------------------------------- parameter set names

SETS = ["sweep[train.lr=0.1,model.width=16]", "sweep[train.lr=0.1,model.width=32]",
        "sweep[train.lr=0.01,model.width=16]", "default", "other[opt.lr=0.1]", 'j[x=[1,2],y={"a":1}]']


@pytest.mark.parametrize("query, found", [
    ("default", "default"),
    ("sweep[train.lr=0.1,model.width=32]", "sweep[train.lr=0.1,model.width=32]"),  # the exact name
    ("lr=0.1,width=16", "sweep[train.lr=0.1,model.width=16]"),                     # leaf names
    ("width=16, lr=0.1", "sweep[train.lr=0.1,model.width=16]"),                    # any order, spaces
    ("train.lr=0.01", "sweep[train.lr=0.01,model.width=16]"),                      # a full path, a subset
    ("width=32", "sweep[train.lr=0.1,model.width=32]"),
    ("sweep[model.width=32,train.lr=0.1]", "sweep[train.lr=0.1,model.width=32]"),  # the name, reordered
    ("opt.lr=0.1", "other[opt.lr=0.1]"),
    ("other[lr=0.1]", "other[opt.lr=0.1]"),                                        # NAME[...] restricts
    ("x=[1,2]", 'j[x=[1,2],y={"a":1}]'),                                           # values with commas
])
def test_a_set_is_named_exactly_or_by_a_unique_short_form(query, found):
    from orchestrator.runs.paramsets import matching_sets, resolve_param_set

    assert resolve_param_set(query, SETS, "run r") == found
    assert matching_sets(query, SETS) == [found]


def test_ambiguous_or_unknown_set_names_list_the_candidates():
    from orchestrator.errors import OrchError, ParamSetNotFoundError
    from orchestrator.runs.paramsets import matching_sets, resolve_param_set, swept_values

    with pytest.raises(ParamSetNotFoundError, match=r"'lr=0.1' is ambiguous in run r: it matches 3 sets: "
                                                    r"sweep\[train.lr=0.1,model.width=16\], .*, other\[opt.lr=0.1\]"):
        resolve_param_set("lr=0.1", SETS, "run r")
    with pytest.raises(ParamSetNotFoundError, match=r"matches 2 sets"):
        resolve_param_set("sweep[lr=0.1]", SETS, "run r")
    for missing in ("lr=0.10", "lr=0.3", "nope", "sweep", "depth=16", "sweep[lr=0.01,width=32]", "=1"):
        assert matching_sets(missing, SETS) == []
        with pytest.raises(OrchError, match=rf"run r has no parameter set '{__import__('re').escape(missing)}'; its "
                                            r"sets: sweep\[.*e\.g\. lr=0\.1,width=16\)"):
            resolve_param_set(missing, SETS, "run r")
    many = [f"s[i={i}]" for i in range(25)]
    with pytest.raises(ParamSetNotFoundError, match=r"s\[i=19\] and 5 more \(name a set exactly"):
        resolve_param_set("i=99", many, "this experiment")
    with pytest.raises(ParamSetNotFoundError, match=r"has no parameter set 'x'; its sets: a, b$"):
        resolve_param_set("x", ["a", "b"], "this experiment")  # nothing swept: no short-form hint
    assert swept_values("sweep[train.lr=0.1,model.width=16]") == ("sweep", {"train.lr": "0.1", "model.width": "16"})
    assert swept_values("default") is None and swept_values("odd[name]") is None


def two_key_sweep(project):
    pipeline(project)
    project.write("stages/data.py", (project.root / "stages/data.py").read_text().replace(
        "return sum(data) * record.params.train.lr", "return sum(data) * record.params.train.lr + record.params.model.width"))
    project.write("params/base.yaml", (project.root / "params/base.yaml").read_text() + "model:\n  width: 1\n")
    project.write("params/grid.yaml", '''
        extends: base.yaml
        sweep:
          train.lr: [0.1, 0.2]
          model.width: [16, 32]
    ''')
    return ("run", "experiment.py", "--params", "params/grid.yaml")


def test_short_set_names_in_get_why_accept_and_load(project):
    grid = two_key_sweep(project)
    project.orch(*grid)
    # orch get and orchestrator.load: any order, leaf names or full paths, the exact name
    project.orch("get", "model", "--param-set", "width=32,lr=0.2", "-o", "m.pkl")
    assert pickle.loads((project.root / "m.pkl").read_bytes()) == pytest.approx(90 * 0.2 + 32)
    out = project.orch("get", "score", "--param-set", "train.lr=0.1,width=16", "-o", "s.json").stdout
    assert "[grid[train.lr=0.1,model.width=16]]" in out
    from orchestrator import load

    assert load("model", param_set="lr=0.1,model.width=32", experiment_dir=project.root) == pytest.approx(9 + 32)
    assert load("model", param_set="grid[model.width=16,train.lr=0.2]", experiment_dir=project.root) == \
        pytest.approx(18 + 16)
    ambiguous = project.orch("get", "model", "--param-set", "lr=0.1", check=False)
    assert ambiguous.returncode == 1 and "Traceback" not in ambiguous.stderr
    assert ("'lr=0.1' is ambiguous in run" in ambiguous.stderr and "grid[train.lr=0.1,model.width=16], "
            "grid[train.lr=0.1,model.width=32]" in ambiguous.stderr)
    unknown = project.orch("get", "model", "--param-set", "lr=0.3", check=False)
    assert unknown.returncode == 1 and "has no parameter set 'lr=0.3'; its sets: grid[" in unknown.stderr
    several = project.orch("get", "model", check=False)
    assert "exists in 4 parameter sets" in several.stderr and "e.g. lr=0.1,width=16" in several.stderr

    # orch why --run, and orch why EXPERIMENT (planned: nothing has run for lr=0.3 yet)
    why = project.orch("why", "--param-set", "lr=0.2,width=16").stdout
    assert "grid[train.lr=0.2,model.width=16]" in why and "width=32" not in why and "lr=0.1" not in why
    bad = project.orch("why", "--param-set", "width=8", check=False)
    assert bad.returncode == 1 and "has no parameter set 'width=8'" in bad.stderr
    planned = project.orch("why", "experiment.py", "-p", "params/grid.yaml", "-S", "data.n=5",
                           "--param-set", "width=32,lr=0.1").stdout
    assert "make_data [grid[train.lr=0.1,model.width=32]]" in planned and "width=16" not in planned
    bad = project.orch("why", "experiment.py", "-p", "params/grid.yaml", "--param-set", "lr=0.1", check=False)
    assert bad.returncode == 1 and "'lr=0.1' is ambiguous in this experiment: it matches 2 sets" in bad.stderr

    # orch accept: a code change of train, accepted for one set named by a short form
    project.write("stages/data.py", (project.root / "stages/data.py").read_text().replace(
        'count("train")', 'count("train")  # refactored\n    log = None'))
    out = project.orch("accept", "experiment.py", "train", "-p", "params/grid.yaml", "--param-set", "width=16,lr=0.2")
    assert out.stdout.startswith("accepted     train[grid[train.lr=0.2,model.width=16]]") and out.stdout.count("\n") == 1
    bad = project.orch("accept", "experiment.py", "train", "-p", "params/grid.yaml", "--param-set", "lr=9", check=False)
    assert bad.returncode == 1 and "this experiment has no parameter set 'lr=9'; its sets: grid[" in bad.stderr
    project.reset_counts()
    project.orch(*grid)
    assert project.counts() == {"train": 3}


# ------------------------------------------------------------------------------ run ids by prefix


def test_run_id_prefixes_everywhere_and_missing_runs_list_the_recent_ones(project):
    pipeline(project)
    project.orch(*BASE)
    first = project.manifest()["run_id"]
    project.orch(*BASE, "-S", "train.lr=0.5")
    second = project.manifest()["run_id"]
    prefix = first[:-2]  # unique: the random tail differs
    out = project.orch("show", prefix).stdout
    assert first in out and second not in out
    out = project.orch("report", prefix).stdout.strip()
    assert out == str(project.root / ".orch" / "runs" / first / "report.html") and Path(out).is_file()
    assert project.orch("show", prefix, "--html").stdout.strip() == out
    why = project.orch("why", "--run", prefix).stdout
    assert f"run {first}: 3 not from the cache" in why and "train [base]" in why
    project.orch("get", "model", "--run", prefix, "-o", "m.pkl")
    assert pickle.loads((project.root / "m.pkl").read_bytes()) == pytest.approx(9.0)
    from orchestrator import load

    assert load("model", run=second[:-1], experiment_dir=project.root) == pytest.approx(45.0)

    # ambiguous: every run id that starts with it, newest first
    common = os.path.commonprefix([first, second])
    for args in (("show", common), ("report", common), ("why", "--run", common), ("get", "model", "--run", common)):
        proc = project.orch(*args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, args
        assert f"run {common!r} is ambiguous" in proc.stderr and f"{second}, {first}" in proc.stderr, args

    # not found: the 10 most recent runs, newest first, and how many more there are
    runs = project.root / ".orch" / "runs"
    old = [f"20000101-0000{i:02d}.000-abcd" for i in range(11)]  # older than any real run
    for run_id in old:
        (runs / run_id).mkdir()
        (runs / run_id / "manifest.json").write_text(json.dumps({**project.manifest(first), "run_id": run_id}))
    for args in (("show", "nope"), ("report", "nope"), ("why", "--run", "nope"), ("get", "model", "--run", "nope")):
        proc = project.orch(*args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, args
        listed = f"{second}, {first}, {', '.join(reversed(old[-8:]))} and 3 older (orch runs -n 13 lists them all)"
        assert f"no run 'nope' in {runs}; runs: {listed}" in proc.stderr, (args, proc.stderr)
    assert len(project.orch("runs", "-n", "13").stdout.strip().splitlines()) == 13


# ------------------------------------------------------------- the latest run that has a parameter set


def py(project, code: str) -> subprocess.CompletedProcess:
    """Python in a fresh process in the project directory, as a notebook would run it."""
    env = {k: v for k, v in os.environ.items() if k != "ORCH_CACHE"}
    proc = subprocess.run([os.sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_load_and_get_look_back_for_the_latest_run_with_the_set(project):
    pipeline(project)
    project.orch(*BASE)
    base_run = project.manifest()["run_id"]
    project.orch(*SWEEP, "-S", "data.n=4")  # the latest run is a sweep: no set "base" in it
    sweep_run = project.manifest()["run_id"]

    out = py(project, 'import orchestrator; print(orchestrator.load("model", param_set="base"))')
    assert out.stdout.strip() == "9.0"  # the base run's model, not a sweep point's
    note = (f"using run {base_run}, the latest run with parameter set 'base' and artifact 'model' "
            f"(the latest run, {sweep_run}, has no such set)")
    assert out.stderr.strip() == note
    got = project.orch("get", "model", "--param-set", "base", "-o", "m.pkl")
    assert pickle.loads((project.root / "m.pkl").read_bytes()) == pytest.approx(9.0)
    assert f"model of run {base_run} [base]" in got.stdout and note in got.stderr
    # the latest run has the set: no looking back, nothing said
    out = py(project, 'import orchestrator; print(orchestrator.load("model", param_set="lr=0.2"))')
    assert out.stdout.strip() == str(12 * 0.2) and out.stderr == ""
    # short forms look back too
    project.orch(*BASE, "-S", "train.lr=0.3")
    third = project.manifest()["run_id"]
    out = py(project, 'import orchestrator; print(orchestrator.load("model", param_set="lr=0.2"))')
    assert out.stdout.strip() == str(12 * 0.2) and f"using run {sweep_run}" in out.stderr
    assert f"the latest run, {third}, has no such set" in out.stderr
    # only with run="latest": a named run is that run
    from orchestrator import load
    from orchestrator.errors import ParamSetNotFoundError

    with pytest.raises(ParamSetNotFoundError, match=f"run {sweep_run} has no parameter set 'base'"):
        load("model", run=sweep_run, param_set="base", experiment_dir=project.root)
    # a set no run has: the latest run's sets, and that no earlier run has it either
    proc = project.orch("get", "model", "--param-set", "lr=0.7", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"run {third} has no parameter set 'lr=0.7'; its sets: base" in proc.stderr
            and "no earlier run has artifact 'model' in such a set either" in proc.stderr)
    # an artifact the set's latest run did not produce: an older run that has both
    project.write("stages/data.py", (project.root / "stages/data.py").read_text().replace(
        'count("train")', 'count("train"); assert record.params.train.lr != 0.2'))
    project.orch(*SWEEP, "-S", "data.n=4", check=False)
    failed_sweep = project.manifest()["run_id"]
    project.orch(*BASE)
    out = py(project, 'import orchestrator; print(orchestrator.load("model", param_set="lr=0.2"))')
    assert f"using run {sweep_run}" in out.stderr and failed_sweep not in out.stderr


def test_a_stage_loading_a_set_by_name_stays_cached_while_other_runs_come_and_go(project, tmp_path):
    """The traced query (run="latest", param_set="base") resolves as load() does: through the runs
    that lack the set, to the same object, so the consuming stage is not re-run by a sweep."""
    from conftest import COUNTING, Project

    pipeline(project)
    project.orch(*BASE)
    infer = Project(tmp_path / "infer")
    infer.root.mkdir()
    infer.write("stages/__init__.py", "")
    infer.write("stages/counting.py", COUNTING)
    infer.write("stages/batch.py", f'''
        import orchestrator
        from orchestrator import stage, JsonCacher
        from stages.counting import count

        @stage(outputs=["pred"], cachers=[JsonCacher])
        def predict(record):
            count("predict")
            return orchestrator.load("model", param_set="base", cache={str(project.root / ".orch")!r}) * 10
    ''')
    infer.write("experiment.py", "from stages.batch import predict\n\ndef run(record):\n    predict(record)\n")
    infer.orch("run", "experiment.py")
    assert infer.counts() == {"predict": 1}
    project.orch(*SWEEP, "-S", "data.n=4")  # a sweep becomes the latest run
    out = infer.orch("run", "experiment.py")
    assert infer.counts() == {"predict": 1}, out.stdout
    project.orch(*BASE, "-S", "train.lr=0.5")  # a new base model
    out = infer.orch("run", "experiment.py")
    assert infer.counts() == {"predict": 2}, out.stdout
    infer.orch("get", "pred", "-o", "p.json")
    assert json.loads((infer.root / "p.json").read_text()) == pytest.approx(450.0)
