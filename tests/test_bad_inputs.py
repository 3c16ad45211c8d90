"""Bad inputs, table-driven: every user mistake exits non-zero with a message naming the file (and
line), stage, artifact, parameter or run, prints no traceback (without --debug), and leaves what
is already stored untouched: the cache directory hashes the same before and after.

Each case starts from a copy of one project whose three-stage pipeline has run once (so there is
finished work to lose), changes one thing, runs one command and checks all of that.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import COUNTING, Project, pipeline

BASE = ("run", "experiment.py", "-p", "params/base.yaml")
SWEEP = ("run", "experiment.py", "-p", "params/sweep.yaml")

# A stage that runs an external command chosen by the parameter `ext.cmd` (a list).
EXTERNAL = '''
from orchestrator import stage, run_external, PickleCacher

@stage(inputs=["model"], outputs=["report"], cachers=[PickleCacher])
def publish(record, model):
    run_external(list(record.params.ext.cmd), timeout=record.params.ext.get("timeout"), launcher="none", echo=False)
    return model
'''
EXTERNAL_EXPERIMENT = '''
from stages.data import make_data, train, evaluate
from stages.ext import publish

def run(record):
    model = train(make_data(record))
    evaluate(model)
    publish(model)
'''


def _stage_file(body: str) -> dict[str, str]:
    """An experiment whose only stage is `body` (a decorated function named `bad`)."""
    return {"stages/bad.py": "from orchestrator import stage, PickleCacher, JsonCacher\n" + textwrap.dedent(body),
            "experiment.py": "from stages.bad import bad\n\ndef run(record):\n    bad(record)\n"}


@dataclass
class Case:
    args: tuple[str, ...]
    needles: tuple[str, ...]  # all must appear in stderr
    files: dict[str, str | bytes] = field(default_factory=dict)  # written before the command
    code: int = 1
    records_run: bool = False  # the mistake shows while running: a run (manifest) is recorded
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # -- parameter files
    "yaml syntax": Case(BASE[:3] + ("params/bad.yaml",), ("bad.yaml:3",), {"params/bad.yaml": "data:\n  n: 1\n x: [1\n"}),
    "yaml not a mapping": Case(BASE[:3] + ("params/bad.yaml",), ("bad.yaml", "mapping"), {"params/bad.yaml": "- 1\n- 2\n"}),
    "yaml scalar": Case(BASE[:3] + ("params/bad.yaml",), ("bad.yaml",), {"params/bad.yaml": "42\n"}),
    "yaml not utf-8": Case(BASE[:3] + ("params/bad.yaml",), ("bad.yaml",), {"params/bad.yaml": b"data: \xff\xfe\n"}),
    "yaml python tag": Case(BASE[:3] + ("params/bad.yaml",), ("bad.yaml",),
                            {"params/bad.yaml": "data: !!python/object/apply:os.system ['true']\n"}),
    "params file missing": Case(BASE[:3] + ("params/nope.yaml",), ("params/nope.yaml",)),
    "params file is a directory": Case(BASE[:3] + ("params",), ("params",), code=2),
    "extends cycle": Case(BASE[:3] + ("params/a.yaml",), ("a.yaml", "b.yaml", "cycle"),
                          {"params/a.yaml": "extends: b.yaml\n", "params/b.yaml": "extends: a.yaml\n"}),
    "extends missing": Case(BASE[:3] + ("params/a.yaml",), ("a.yaml", "gone.yaml"), {"params/a.yaml": "extends: gone.yaml\n"}),
    "extends not a string": Case(BASE[:3] + ("params/a.yaml",), ("a.yaml", "extends"), {"params/a.yaml": "extends: 3\n"}),
    "sweep over a missing key": Case(BASE[:3] + ("params/s.yaml",), ("s.yaml", "train.lrr"),
                                     {"params/s.yaml": "extends: base.yaml\nsweep:\n  train.lrr: [1, 2]\n"}),
    "sweep over an empty list": Case(BASE[:3] + ("params/s.yaml",), ("s.yaml", "train.lr", "empty"),
                                     {"params/s.yaml": "extends: base.yaml\nsweep:\n  train.lr: []\n"}),
    "sweep not a list": Case(BASE[:3] + ("params/s.yaml",), ("s.yaml", "train.lr"),
                             {"params/s.yaml": "extends: base.yaml\nsweep:\n  train.lr: 0.5\n"}),
    "sweep not a mapping": Case(BASE[:3] + ("params/s.yaml",), ("s.yaml", "sweep"),
                                {"params/s.yaml": "extends: base.yaml\nsweep: [1, 2]\n"}),
    "python params raise": Case(BASE[:3] + ("params/p.py",), ("p.py", "ZeroDivisionError"),
                                {"params/p.py": "x = 1 / 0\n"}),
    "-S without =": Case(BASE + ("-S", "train.lr"), ("train.lr", "KEY=VALUE")),
    "-S unknown key": Case(BASE + ("-S", "train.lrr=0.1"), ("train.lrr", "train.lr")),
    "-S bad yaml value": Case(BASE + ("-S", "train.lr=[0.1,"), ("train.lr",)),
    "-S empty key": Case(BASE + ("-S", "=3"), ("=3",)),
    # -- experiment files
    "experiment missing": Case(("run", "nope.py", "-p", "params/base.yaml"), ("nope.py", "not found")),
    "experiment is a directory": Case(("run", "stages", "-p", "params/base.yaml"), ("stages",), code=2),
    "experiment without run": Case(BASE, ("experiment.py", "run(record)"), {"experiment.py": "x = 1\n"}),
    "experiment syntax error": Case(BASE, ("experiment.py:2", "never closed"), {"experiment.py": "def run(record):\n    return (\n"}),
    "experiment import fails": Case(BASE, ("experiment.py", "no_such_module"), {"experiment.py": "import no_such_module\n"}),
    "run raises while planning": Case(BASE, ("experiment.py", "wiring broke"),
                                      {"experiment.py": "def run(record):\n    raise RuntimeError('wiring broke')\n"}),
    "run reads a missing parameter": Case(BASE, ("nope", "base"),
                                          {"experiment.py": "def run(record):\n    record.params.nope\n"}),
    # -- stage declarations and wiring
    "duplicate outputs": Case(BASE, ("bad", "'a'", "twice"), _stage_file('''
        @stage(outputs=["a", "a"], cachers=[PickleCacher, PickleCacher])
        def bad(record):
            return 1, 2
    ''')),
    "input nobody produces": Case(BASE, ("train", "'data'"), {"experiment.py": textwrap.dedent('''
        from stages.data import train

        def run(record):
            train(record)
    ''')}),
    "stage parameters not named after its inputs": Case(BASE, ("bad", "declares inputs ['a']", "(record, b)"),
                                                        _stage_file('''
        @stage(outputs=["a"], cachers=[PickleCacher])
        def make(record):
            return 1

        @stage(inputs=["a"], outputs=["x"], cachers=[PickleCacher])
        def bad(record, b):
            return b
    ''')),
    "stage without a record parameter": Case(BASE, ("bad", "first parameter must be the record"), _stage_file('''
        @stage(outputs=["x"], cachers=[PickleCacher])
        def bad(*, record):
            return 1
    ''')),
    "stage consumes its own output": Case(BASE, ("bad", "'x'"), _stage_file('''
        @stage(inputs=["x"], outputs=["x"], cachers=[PickleCacher])
        def bad(record, x):
            return x
    ''')),
    "wrong output count": Case(BASE, ("bad", "2 outputs"), _stage_file('''
        @stage(outputs=["a", "b"], cachers=[PickleCacher, PickleCacher])
        def bad(record):
            return 1
    '''), records_run=True),
    "output a cacher cannot save": Case(BASE, ("bad", "'a'", "JsonCacher"), _stage_file('''
        @stage(outputs=["a"], cachers=[JsonCacher])
        def bad(record):
            return {1, 2}
    '''), records_run=True),
    "cachers and outputs differ in number": Case(BASE, ("bad", "cachers"), _stage_file('''
        @stage(outputs=["a", "b"], cachers=[PickleCacher])
        def bad(record):
            return 1, 2
    ''')),
    "artifact name with a slash": Case(BASE, ("bad", "a/b"), _stage_file('''
        @stage(outputs=["a/b"], cachers=[PickleCacher])
        def bad(record):
            return 1
    ''')),
    "artifact name with dot-dot": Case(BASE, ("bad", "'..'"), _stage_file('''
        @stage(outputs=[".."], cachers=[PickleCacher])
        def bad(record):
            return 1
    ''')),
    "artifact name with NUL": Case(BASE, ("bad", "\\x00"), _stage_file('''
        @stage(outputs=["a\\x00b"], cachers=[PickleCacher])
        def bad(record):
            return 1
    ''')),
    "artifact name not utf-8": Case(BASE, ("bad", "\\udcff"), _stage_file('''
        @stage(outputs=["a\\udcff"], cachers=[PickleCacher])
        def bad(record):
            return 1
    ''')),
    "empty artifact name": Case(BASE, ("bad", "''"), _stage_file('''
        @stage(outputs=[""], cachers=[PickleCacher])
        def bad(record):
            return 1
    ''')),
    "input name not a string": Case(BASE, ("bad", "3"), _stage_file('''
        @stage(inputs=[3], outputs=["a"], cachers=[PickleCacher])
        def bad(record, x):
            return 1
    ''')),
    "unknown cacher": Case(BASE, ("bad", "cacher"), _stage_file('''
        @stage(outputs=["a"], cachers=["pickle"])
        def bad(record):
            return 1
    ''')),
    "unknown --overwrite-stage": Case(BASE + ("--overwrite-stage", "trian"), ("trian", "train")),
    # -- external commands
    "external command missing": Case(BASE, ("publish", "no-such-program-xyz"),
                                     {"stages/ext.py": EXTERNAL, "experiment.py": EXTERNAL_EXPERIMENT,
                                      "params/base.yaml": "data: {n: 10}\ntrain: {lr: 0.1, nproc: 1}\n"
                                                          "ext: {cmd: [no-such-program-xyz]}\n"}, records_run=True),
    "external command fails": Case(BASE, ("publish", "exit", "3"),
                                   {"stages/ext.py": EXTERNAL, "experiment.py": EXTERNAL_EXPERIMENT,
                                    "params/base.yaml": "data: {n: 10}\ntrain: {lr: 0.1, nproc: 1}\n"
                                                        f"ext: {{cmd: ['{sys.executable}', -c, 'raise SystemExit(3)']}}\n"},
                                   records_run=True),
    "external command times out": Case(BASE, ("publish", "timed out"),
                                       {"stages/ext.py": EXTERNAL, "experiment.py": EXTERNAL_EXPERIMENT,
                                        "params/base.yaml": "data: {n: 10}\ntrain: {lr: 0.1, nproc: 1}\n"
                                                            f"ext: {{cmd: ['{sys.executable}', -c, 'import time; time.sleep(60)'], "
                                                            "timeout: 0.5}\n"}, records_run=True),
    # -- naming what ran before
    "show unknown run": Case(("show", "nosuchrun"), ("nosuchrun",)),
    "why unknown run": Case(("why", "--run", "nosuchrun"), ("nosuchrun",)),
    "report unknown run": Case(("report", "nosuchrun"), ("nosuchrun",)),
    "compare unknown run": Case(("compare", "nosuchrun"), ("nosuchrun",)),
    "get unknown run": Case(("get", "model", "--run", "nosuchrun", "-o", "out"), ("nosuchrun",)),
    "get unknown artifact": Case(("get", "modle", "-o", "out"), ("modle", "model")),
    "get unknown param set": Case(("get", "model", "--param-set", "lr=9", "-o", "out"), ("lr=9",)),
    "why unknown param set": Case(("why", "--param-set", "lr=9"), ("lr=9",)),
    "accept unknown param set": Case(("accept", "experiment.py", "train", "-p", "params/sweep.yaml",
                                      "--param-set", "lr=9"), ("lr=9",)),
    "accept unknown stage": Case(("accept", "experiment.py", "trian", "-p", "params/base.yaml"), ("trian",)),
    "get artifact name escaping": Case(("get", "../model", "-o", "out"), ("../model",)),
    # -- the cache directory
    "cache dir is a file": Case(BASE + ("--cache", "afile"), ("afile", "is a file"), {"afile": "not a directory\n"}, code=2),
    "cache dir inside a file": Case(BASE + ("--cache", "afile/cache"), ("afile",), {"afile": "not a directory\n"}),
    "ORCH_CACHE is a file": Case(("runs",), ("afile",), {"afile": "not a directory\n"}, code=2, env={"ORCH_CACHE": "afile"}),
}


#: What a bad input may change in the cache: parse and stat caches (fingerprints of the files it
#: read, keyed by their stamps, which a copied project does not share; parsed parameter files; the
#: entry index of what planning read) and empty lock files.
DERIVED = ("fingerprints.json", "stat-cache.json", "yaml-cache.json", "index", "locks", "tmp")
#: What a run that started and failed may add besides: its run record and the code manifests of the
#: stages it was about to run. Stored results (entries, objects, heads) never change.
RUN_RECORDS = ("runs", "code-manifests.json")


def _tree_digest(root: Path, skip: tuple[str, ...]) -> str:
    """Hash of every file's path, mode and content under `root`, leaving out the top-level names `skip`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] and rel.parts[0] in skip:
            continue
        dirnames.sort()
        for name in sorted(filenames):
            if not rel.parts and name in skip:
                continue
            p = Path(dirpath) / name
            h.update(f"{rel / name}\0{p.lstat().st_mode}\0".encode())
            h.update(p.read_bytes() if not p.is_symlink() else os.readlink(p).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The pipeline, run once over the sweep: finished work in the cache."""
    p = Project(tmp_path_factory.mktemp("bad-inputs") / "proj")
    p.root.mkdir()
    p.write("stages/__init__.py", "")
    p.write("stages/counting.py", COUNTING)
    pipeline(p)
    p.orch(*SWEEP)
    p.orch(*BASE)
    return p.root


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, template, tmp_path):
    case = CASES[name]
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    project = Project(root)
    project.reset_counts()
    for rel, content in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            project.write(rel, content)
    cache = root / ".orch"
    assert {"entries", "objects", "refs", "runs"} <= set(os.listdir(cache))
    before_all, before = _tree_digest(cache, DERIVED), _tree_digest(cache, DERIVED + RUN_RECORDS)
    runs_before = set(os.listdir(cache / "runs"))

    proc = project.orch(*case.args, check=False, env=case.env)

    out = proc.stdout + proc.stderr
    assert proc.returncode == case.code, out
    assert "Traceback" not in out, out
    for needle in case.needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr:\n{proc.stderr}"
    # finished work is untouched; only a run that started adds a run record (status failed)
    assert _tree_digest(cache, DERIVED + RUN_RECORDS) == before, "stored results changed"
    if case.records_run:
        assert len(set(os.listdir(cache / "runs")) - runs_before) == 1 and project.manifest()["status"] == "failed"
        assert project.counts().get("make_data", 0) == 0  # what was stored came from the cache
    else:
        assert _tree_digest(cache, DERIVED) == before_all, "the cache changed"


def test_a_path_that_is_not_utf8_does_not_break_the_run_record(template, tmp_path):
    """argv holds undecodable bytes as surrogates: the manifest and the report must still be written."""
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    project = Project(root)
    cache = os.fsdecode(bytes(root) + b"/cache-\xff")
    proc = project.orch(*BASE, "--cache", cache)
    assert "3 ran" in proc.stdout and "Traceback" not in proc.stderr
    latest = Path(cache) / "runs" / "latest"
    assert (latest / "manifest.json").is_file() and "cache-" in (latest / "report.html").read_text("utf-8")


def test_debug_shows_the_traceback_a_bad_input_hides(template, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    project = Project(root)
    project.write("experiment.py", "def run(record):\n    raise RuntimeError('wiring broke')\n")
    proc = project.orch("--debug", *BASE, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "wiring broke" in proc.stderr


def _accepts(fn, inputs: list[str]) -> bool:
    from orchestrator import stage
    from orchestrator.errors import StageDefinitionError

    try:
        stage(inputs=inputs, outputs=["out"])(fn)
    except StageDefinitionError:
        return False
    return True


def test_the_usual_signature_is_judged_as_inspect_judges_it(monkeypatch):
    """stage._check_signature reads `def f(record, a, b)` from its code object: same verdicts as the
    inspect.signature path it skips."""
    stage_module = importlib.import_module("orchestrator.stage")  # (the package's `stage` is the decorator)

    def two(record, a, b):
        return a

    def none(record):
        return 1

    def defaulted(record, a, b=1):
        return a

    cases = [(two, ["a", "b"]), (two, ["b", "a"]), (two, ["a"]), (two, ["a", "b", "c"]), (two, []),
             (none, []), (none, ["a"]), (defaulted, ["a"]), (defaulted, ["a", "b"]), (defaulted, ["b"])]
    fast = [_accepts(fn, inputs) for fn, inputs in cases]
    monkeypatch.setattr(stage_module, "_FunctionType", None)  # every function through _parameters/inspect
    assert fast == [_accepts(fn, inputs) for fn, inputs in cases]
    assert fast == [True, True, False, False, False, True, False, True, True, False]
