"""`orch run` end to end: the real CLI in subprocesses on real temp projects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import pipeline

SWEEP = ("run", "experiment.py", "--params", "params/sweep.yaml")
BASE = ("run", "experiment.py", "--params", "params/base.yaml")


def test_first_run_runs_everything_and_second_is_fully_cached(project):
    pipeline(project)
    first = project.orch(*BASE)
    assert project.counts() == {"make_data": 1, "train": 1, "evaluate": 1}
    assert "3 ran" in first.stdout
    second = project.orch(*BASE)
    assert project.counts() == {"make_data": 1, "train": 1, "evaluate": 1}
    assert "3 cached" in second.stdout
    assert set(project.statuses().values()) == {"cached"}


def test_manifest_records_the_run(project):
    pipeline(project)
    project.orch(*BASE)
    m = project.manifest()
    assert m["status"] == "ok" and m["finished"] and m["started"]
    assert m["experiment"].endswith("experiment.py")
    assert m["param_sets"] == {"base": {"data": {"n": 10}, "train": {"lr": 0.1, "nproc": 1}}}
    nodes = {n["stage"]: n for n in m["nodes"]}
    assert nodes["make_data"]["reads"] == {"data.n": 10}
    assert nodes["train"]["reads"] == {"train.lr": 0.1}
    assert nodes["train"]["status"] == "ran" and len(nodes["train"]["key"]) == 64
    assert set(nodes["train"]["outputs"]) == {"model"}
    assert isinstance(nodes["train"]["duration_s"], float) and 0 <= nodes["train"]["duration_s"] <= m["duration_s"]
    run_dir = project.root / ".orch" / "runs" / m["run_id"]
    assert (project.root / ".orch" / "runs" / "latest").resolve() == run_dir.resolve()


def test_parameter_read_only_by_train_leaves_make_data_cached(project):
    pipeline(project)
    project.orch(*BASE)
    project.reset_counts()
    out = project.orch(*BASE, "-S", "train.lr=0.5")
    assert project.counts() == {"train": 1, "evaluate": 1}
    assert "train.lr changed: 0.1 -> 0.5" in out.stdout
    # a parameter nobody reads changes nothing
    project.reset_counts()
    project.orch(*BASE, "-S", "train.nproc=4", "-S", "train.lr=0.5")
    assert project.counts() == {}


def test_helper_edit_reruns_user_and_early_cutoff_keeps_downstream(project):
    pipeline(project)
    project.orch(*BASE)
    project.reset_counts()
    # same output bytes: make_data re-runs, nothing downstream does
    project.write("stages/util.py", '''
        def scale(x):
            return x + x
    ''')
    project.orch(*BASE)
    assert project.counts() == {"make_data": 1}
    project.reset_counts()
    # different output: everything downstream re-runs
    project.write("stages/util.py", '''
        def scale(x):
            return x * 3
    ''')
    out = project.orch(*BASE)
    assert project.counts() == {"make_data": 1, "train": 1, "evaluate": 1}
    assert "code changed" in out.stdout and "input data changed" in out.stdout


def test_comments_blank_lines_and_docstrings_change_nothing(project):
    pipeline(project)
    project.orch(*BASE)
    project.reset_counts()
    src = (project.root / "stages/data.py").read_text()
    src = src.replace('"""Make data."""', '"""Make the data, documented differently."""\n\n    # a comment')
    project.write("stages/data.py", src + "\n\n# trailing comment\n")
    project.orch(*BASE)
    assert project.counts() == {}


def test_sweep_sets_share_one_make_data(project):
    pipeline(project)
    project.orch(*SWEEP)
    assert project.counts() == {"make_data": 1, "train": 2, "evaluate": 2}
    statuses = project.statuses()
    assert statuses[("make_data", "sweep[train.lr=0.1]")] == "ran"
    assert statuses[("make_data", "sweep[train.lr=0.2]")] == "cached"


def test_overwrite_and_overwrite_stage_rerun_downstream(project):
    pipeline(project)
    project.orch(*BASE)
    project.reset_counts()
    project.orch(*BASE, "--overwrite-stage", "train")
    assert project.counts() == {"train": 1, "evaluate": 1}
    project.reset_counts()
    project.orch(*BASE, "--overwrite")
    assert project.counts() == {"make_data": 1, "train": 1, "evaluate": 1}
    bad = project.orch(*BASE, "--overwrite-stage", "trian", check=False)
    assert bad.returncode == 1 and "trian" in bad.stderr and "train" in bad.stderr


def test_dry_run_reports_states_and_runs_nothing(project):
    pipeline(project)
    runs = project.root / ".orch" / "runs"
    dry = project.orch(*BASE, "--dry")
    assert project.counts() == {}
    assert "run     make_data" in dry.stdout and "pending train" in dry.stdout
    assert not runs.exists()  # a dry run records no run
    project.orch(*BASE)
    real = project.manifest()["run_id"]
    project.reset_counts()
    dry = project.orch(*BASE, "-S", "train.lr=0.3", "--dry")
    assert "cached  make_data" in dry.stdout and "run     train" in dry.stdout
    assert "pending evaluate" in dry.stdout
    assert project.counts() == {}
    assert sorted(p.name for p in runs.iterdir()) == sorted([real, "latest"])  # still only the real run
    assert project.manifest()["run_id"] == real and project.manifest()["status"] == "ok"


def _failing_pipeline(project):
    pipeline(project)
    project.write("stages/extra.py", '''
        from orchestrator import stage, PickleCacher
        from stages.counting import count

        @stage(inputs=["data"], outputs=["side"], cachers=[PickleCacher])
        def side(record, data):
            count("side")
            if record.params.train.lr > 0.15:
                raise ValueError("learning rate too high for side")
            return len(data)

        @stage(inputs=["side"], outputs=["after"], cachers=[PickleCacher])
        def after_side(record, side):
            count("after_side")
            return side + 1
    ''')
    project.write("experiment.py", '''
        from stages.data import make_data, train, evaluate
        from stages.extra import side, after_side

        def run(record):
            make_data(record)
            after_side(side(record))
            evaluate(train(record))
    ''')


def test_failing_stage_skips_dependents_runs_the_rest_and_exits_nonzero(project):
    _failing_pipeline(project)
    proc = project.orch(*SWEEP, check=False)
    assert proc.returncode == 1
    assert "side [sweep[train.lr=0.2]]" in proc.stderr and "learning rate too high" in proc.stderr
    assert "Traceback" not in proc.stderr
    counts = project.counts()
    assert counts == {"make_data": 1, "side": 2, "after_side": 1, "train": 2, "evaluate": 2}
    st = project.statuses()
    assert st[("side", "sweep[train.lr=0.2]")] == "failed"
    assert st[("after_side", "sweep[train.lr=0.2]")] == "skipped"
    assert st[("evaluate", "sweep[train.lr=0.2]")] == "ran"
    m = project.manifest()
    assert m["status"] == "failed"
    failed = [n for n in m["nodes"] if n["status"] == "failed"][0]
    assert "ValueError: learning rate too high" in failed["error"] and "raise ValueError" in failed["traceback"]
    # nothing that finished is lost: the re-run only retries the failure (and its dependents)
    project.reset_counts()
    proc = project.orch(*SWEEP, "--debug", check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "raise ValueError" in proc.stderr
    assert project.counts() == {"side": 1}


def test_in_memory_stage_always_runs_and_consumers_cache_on_its_content(project):
    project.write("stages/mem.py", '''
        from orchestrator import stage, PickleCacher
        from stages.counting import count

        @stage(outputs=["table"])
        def load_table(record):
            count("load_table")
            return {"rows": record.params.n}

        @stage(inputs=["table"], outputs=["total"], cachers=[PickleCacher])
        def total(record, table):
            count("total")
            return table["rows"] * 2
    ''')
    project.write("experiment.py", '''
        from stages.mem import load_table, total

        def run(record):
            total(load_table(record))
    ''')
    project.write("params/p.yaml", "n: 3\n")
    project.orch("run", "experiment.py", "-p", "params/p.yaml")
    project.orch("run", "experiment.py", "-p", "params/p.yaml")
    assert project.counts() == {"load_table": 2, "total": 1}


def test_aggregate_over_a_sweep(project):
    pipeline(project)
    project.write("stages/report.py", '''
        from orchestrator import aggregate, JsonCacher
        from stages.counting import count

        @aggregate(inputs=["score"], outputs=["table"], cachers=[JsonCacher])
        def summarize(record, score):
            count("summarize")
            return {name: {"score": s["score"], "lr": record.param_sets[name]["train"]["lr"]}
                    for name, s in sorted(score.items())}
    ''')
    project.write("experiment.py", '''
        from stages.data import make_data, train, evaluate
        from stages.report import summarize

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            summarize(records)
    ''')
    project.orch(*SWEEP)
    project.orch(*SWEEP)
    assert project.counts()["summarize"] == 1
    # a parameter no stage (and not the aggregate) read changes nothing, not even the aggregate
    project.orch(*SWEEP, "-S", "train.nproc=4")
    assert project.counts()["summarize"] == 1
    m = project.manifest()
    agg = [n for n in m["nodes"] if n["stage"] == "summarize"][0]
    assert agg["param_set"] == "aggregate" and agg["status"] == "cached"
    assert agg["reads"] == {"sweep[train%2Elr=0%2E1].train.lr": 0.1, "sweep[train%2Elr=0%2E2].train.lr": 0.2}
    obj = agg["outputs"]["table"]
    path = project.root / ".orch" / "objects" / obj[:2] / (obj[2:] + ".json")
    table = json.loads(path.read_text())
    assert table["sweep[train.lr=0.2]"]["lr"] == 0.2
    assert table["sweep[train.lr=0.1]"]["score"] == 90 * 0.1 + 1


def test_cache_option_and_environment_variable(project, tmp_path):
    pipeline(project)
    shared = tmp_path / "shared-cache"
    project.orch(*BASE, "--cache", str(shared))
    assert (shared / "runs" / "latest" / "manifest.json").exists()
    assert not (project.root / ".orch").exists()
    project.reset_counts()
    project.orch(*BASE, env={"ORCH_CACHE": str(shared)})
    assert project.counts() == {}


def test_python_parameter_file(project):
    pipeline(project)
    project.write("params/grid.py", '''
        def get_params():
            return [{"name": f"n{n}", "data": {"n": n}, "train": {"lr": 0.1}} for n in (2, 3)]
    ''')
    project.orch("run", "experiment.py", "-p", "params/grid.py")
    assert project.counts() == {"make_data": 2, "train": 2, "evaluate": 2}
    assert {k[1] for k in project.statuses()} == {"n2", "n3"}


def test_damaged_object_is_a_miss_with_a_warning_never_a_wrong_value(project):
    pipeline(project)
    project.orch(*BASE)
    m = project.manifest()
    data_hash = [n for n in m["nodes"] if n["stage"] == "make_data"][0]["outputs"]["data"]
    obj = project.root / ".orch" / "objects" / data_hash[:2] / (data_hash[2:] + ".pkl")
    obj.chmod(0o644)
    obj.write_bytes(b"garbage" * 3)  # different size: caught at lookup
    project.reset_counts()
    project.orch(*BASE)
    assert project.counts() == {"make_data": 1}
    # same size, different bytes: caught when a consumer loads it
    good = obj.read_bytes()
    obj.chmod(0o644)
    obj.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    project.reset_counts()
    proc = project.orch(*BASE, "-S", "train.lr=0.7")
    assert project.counts() == {"make_data": 1, "train": 1, "evaluate": 1}
    assert obj.read_bytes() == good
    scores = [n for n in project.manifest()["nodes"] if n["stage"] == "evaluate"]
    assert scores[0]["status"] == "ran"
    assert "damaged" in (proc.stdout + proc.stderr).lower()


def _entry_of(project, stage: str):
    """The entry file of `stage` in the cache (the pipeline has one entry per stage)."""
    for path in (project.root / ".orch" / "entries").rglob("*.json"):
        if json.loads(path.read_text())["stage"].endswith(":" + stage):
            return path
    raise AssertionError(f"no entry of {stage}")


def test_a_malformed_entry_is_a_miss_with_one_warning_and_is_replaced(project):
    """Valid JSON without "outputs" (a bad copy, a hand edit, another orch version) must neither crash
    planning nor be trusted: the node re-runs, once, and its rewritten entry is used again."""
    pipeline(project)
    project.orch(*BASE)
    path = _entry_of(project, "train")
    entry = json.loads(path.read_text())
    del entry["outputs"]
    path.chmod(0o644)
    path.write_text(json.dumps(entry))
    project.reset_counts()
    second = project.orch(*BASE)
    assert project.counts() == {"train": 1}  # train re-ran; evaluate got identical bytes: early cutoff
    warnings = [line for line in second.stderr.splitlines() if "malformed" in line]
    assert len(warnings) == 1 and "train[base]" in warnings[0] and "cache miss" in warnings[0], second.stderr
    assert project.statuses()[("evaluate", "base")] == "cached"
    assert "outputs" in json.loads(path.read_text())  # the node's own entry is whole again
    third = project.orch(*BASE)
    assert "3 cached" in third.stdout and "malformed" not in third.stderr


def test_a_truncated_entry_and_a_damaged_head_are_misses_not_crashes(project):
    pipeline(project)
    project.orch(*BASE)
    path = _entry_of(project, "make_data")
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:40])
    for head in (project.root / ".orch" / "refs").rglob("*.json"):
        # replaced, as orch replaces every record (written in place, a head that is a hard link of
        # its entry, DiskStore.put_entry_and_head, would damage that entry too)
        damaged = head.with_name(head.name + ".damaged")
        damaged.write_text('{"key": 3}')
        damaged.replace(head)
    project.reset_counts()
    second = project.orch(*BASE)
    assert project.counts() == {"make_data": 1}
    # the damaged head explains nothing; the run before names the entry, which is unreadable now
    assert "its cache entry is gone or unreadable" in second.stdout
    assert "Traceback" not in second.stderr


#: What a fully cached `orch run` (one parameter set, no metrics, no images, in this process) does not
#: import: each is imported where what needs it runs (a node that runs, a staging directory, a pickle,
#: a warning, a comparison of sets, a chart, an image, another executor). Import costs, in instructions
#: (a bare interpreter's start-up is ~89 M): logging 19 M, secrets 18 M, tempfile 11 M (+ shutil, random,
#: lzma, bz2), html 8 M, pickle 7 M; each dataclass defined ~2-3.5 M.
NOT_IMPORTED_WHEN_CACHED = (
    "tempfile", "shutil", "pickle", "logging", "secrets", "random", "html", "csv", "base64", "textwrap",
    "traceback", "difflib", "subprocess", "lzma", "bz2",
    "hashlib", "signal",  # OpenSSL's libcrypto 11 M instructions (orchestrator.hashing.sha), signal's enums 3 M
    "orchestrator.executors.task", "orchestrator.executors.worker", "orchestrator.executors.pool",
    "orchestrator.executors.mpi", "orchestrator.executors.torchrun", "orchestrator.executors.slurm",
    "orchestrator.executors.external", "orchestrator.core.lockscope", "orchestrator.runs.compare",
    "orchestrator.runs.curves", "orchestrator.runs.images", "orchestrator.runs.paramsets",
    "orchestrator.store.memory", "orchestrator.distributed", "orchestrator.artifacts.canonical",
    "yaml", "torch", "numpy", "rich", "graphviz", "submitit", "lightning", "mpi4py",
)

#: Also not imported by a cached run through the `orch` console script, but imported by click: ast 17 M
#: (fingerprints parse source only on a cache miss), typing 12 M (orchestrator.typeshim), datetime 5 M, threading
#: 4 M, copy 4 M, weakref 2.5 M (no module-level value in these stages).
NOT_IMPORTED_WITHOUT_CLICK = ("ast", "copy", "threading", "datetime", "typing", "weakref")


def _two_stage_chain(project, params: str) -> None:
    """first -> second, with params/p.yaml; its code dated a second back: Project.write's future mtimes
    would keep the code's fingerprints out of their cache (racy), and a cached run parses no source."""
    project.write("stages/chain.py", """
        from orchestrator import stage, PickleCacher

        @stage(outputs=["a"], cachers=[PickleCacher])
        def first(record):
            return record.params.seed

        @stage(inputs=["a"], outputs=["b"], cachers=[PickleCacher])
        def second(record, a):
            return a + 1
    """)
    project.write("experiment.py", """
        from stages.chain import first, second

        def run(record):
            second(first(record))
    """)
    project.write("params/p.yaml", params)
    for rel in ("stages/chain.py", "experiment.py"):
        past = time.time_ns() - 1_000_000_000
        os.utime(project.root / rel, ns=(past, past))


def test_a_cached_run_imports_only_what_it_uses(project):
    _two_stage_chain(project, "seed: 1\n")
    # long options: for a short one (-p) click itself imports difflib (to suggest a long option)
    run = ("run", "experiment.py", "--params", "params/p.yaml", "--quiet")
    project.orch(*run)
    project.orch(*run)  # the first run made the cache directory after reading its parameters (parsecache)
    # through click (`python -m orchestrator.cli`): nothing but what `import click` imports itself (on
    # Python 3.10 click's uuid imports platform, which imports subprocess)
    click_own = json.loads(subprocess.run([sys.executable, "-c", "import click, json, sys; print(json.dumps(list(sys.modules)))"],
                                          capture_output=True, text=True, check=True).stdout)
    probe = ("import json, runpy, sys\nsys.argv = ['orch', *sys.argv[1:]]\ncode = 0\n"
             "try:\n    runpy.run_module('orchestrator.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             f"print(json.dumps([m for m in {NOT_IMPORTED_WHEN_CACHED!r} if m in sys.modules and m not in {click_own!r}]), file=sys.stderr)\n"
             "sys.exit(code)\n")
    for _ in range(2):  # the run that writes the entry index, then one served from it
        p = subprocess.run([sys.executable, "-c", probe, *run], cwd=project.root, capture_output=True, text=True,
                           env={**os.environ, "ORCH_COUNTS": str(project.counts_file)})
        assert p.returncode == 0 and "2 cached" in p.stdout, p.stdout + p.stderr
        assert json.loads(p.stderr.strip().splitlines()[-1]) == []
    # the `orch` console script (orchestrator.launcher) parses `orch run` itself: neither click nor the
    # CLI module, with short options too, nor what click imports but a cached run does not use
    unwanted = (*NOT_IMPORTED_WHEN_CACHED, "click", "orchestrator.cli", "gettext", *NOT_IMPORTED_WITHOUT_CLICK)
    launcher = ("import json, sys\nsys.argv[0] = 'orch'\nfrom orchestrator.launcher import main\ncode = main()\n"
                f"print(json.dumps([m for m in {unwanted!r} if m in sys.modules]), file=sys.stderr)\n"
                "sys.exit(code)\n")
    for argv in (run, ("run", "experiment.py", "-p", "params/p.yaml", "-q")):
        p = subprocess.run([sys.executable, "-c", launcher, *argv], cwd=project.root, capture_output=True, text=True,
                           env={**os.environ, "ORCH_COUNTS": str(project.counts_file)})
        assert p.returncode == 0 and "2 cached" in p.stdout, p.stdout + p.stderr
        assert json.loads(p.stderr.strip().splitlines()[-1]) == []


#: CPython's own sha256 module (hashing.sha): _sha2 from Python 3.12, _sha256 before
BUILTIN_SHA256 = "_sha2" if sys.version_info >= (3, 12) else "_sha256"


def test_keys_are_the_same_whichever_sha256_makes_them(project):
    """A small planning hashes with CPython's own sha256, a large one with OpenSSL's (hashing.sha):
    a cache written by one is found, node for node, by the other."""
    _two_stage_chain(project, "seed: 1\n")
    run = ("run", "experiment.py", "-p", "params/p.yaml", "-q")
    # a planning of more than N nodes switches (N lowered to 0 here); a first run also switches when it
    # hashes the files it stores
    probe = ("import json, sys\nsys.argv[0] = 'orch'\nfrom orchestrator.hashing import sha\n"
             "sha.OPENSSL_FROM_NODES = int(sys.argv.pop(1))\nfrom orchestrator.launcher import main\ncode = main()\n"
             "print(json.dumps(['hashlib' in sys.modules, sha.new.__module__]), file=sys.stderr)\nsys.exit(code)\n")

    def orch(threshold: int) -> tuple[str, list]:
        p = subprocess.run([sys.executable, "-c", probe, str(threshold), *run], cwd=project.root, capture_output=True,
                           text=True, env={**os.environ, "ORCH_COUNTS": str(project.counts_file)})
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout, json.loads(p.stderr.strip().splitlines()[-1])

    out, used = orch(10**9)
    assert "2 ran" in out and used == [True, "_hashlib"]  # the stored objects' contents were hashed
    out, used = orch(10**9)
    assert "2 cached" in out and used == [False, BUILTIN_SHA256]
    out, used = orch(0)
    assert "2 cached" in out and used == [True, "_hashlib"]
    project.write("params/p.yaml", "seed: 2\n")  # both miss alike, and each finds what the other stored
    out, used = orch(0)
    assert "2 ran" in out
    out, used = orch(10**9)
    assert "2 cached" in out and used == [False, BUILTIN_SHA256]


#: What a cached run of several parameter sets does not import either: its report compares the sets
#: (orchestrator.runs.compare), which once defined dataclasses (dataclasses, inspect, ast, dis,
#: tokenize, typing: ~60 M instructions of a 1,000-node run).
NOT_IMPORTED_BY_A_SWEEP = ("dataclasses", "inspect", "ast", "dis", "tokenize", "typing", "copy", "threading")


def test_a_cached_sweep_imports_no_more_than_one_set(project):
    _two_stage_chain(project, "seed: 1\nsweep:\n  seed: [1, 2, 3]\n")
    run = ("run", "experiment.py", "-p", "params/p.yaml", "-q")
    project.orch(*run)
    project.orch(*run)
    unwanted = (*NOT_IMPORTED_WHEN_CACHED, *NOT_IMPORTED_BY_A_SWEEP)
    unwanted = tuple(m for m in unwanted if m != "orchestrator.runs.compare")  # the comparison is the point
    launcher = ("import json, sys\nsys.argv[0] = 'orch'\nfrom orchestrator.launcher import main\ncode = main()\n"
                f"print(json.dumps([m for m in {unwanted!r} if m in sys.modules]), file=sys.stderr)\n"
                "print(json.dumps('orchestrator.runs.compare' in sys.modules), file=sys.stderr)\n"
                "sys.exit(code)\n")
    for _ in range(2):  # the run that writes the entry index, then one served from it
        p = subprocess.run([sys.executable, "-c", launcher, *run], cwd=project.root, capture_output=True, text=True,
                           env={**os.environ, "ORCH_COUNTS": str(project.counts_file)})
        assert p.returncode == 0 and "6 cached" in p.stdout, p.stdout + p.stderr
        *_, imported, compared = p.stderr.strip().splitlines()
        assert json.loads(imported) == [] and json.loads(compared) is True
