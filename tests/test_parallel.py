"""`--parallel N` (local worker processes) and many writers on one cache: every computation runs once.

The real CLI in subprocesses on temp projects; stage executions are counted through a side-effect
file (conftest), so "ran once" means the stage body ran once, whatever the statuses say.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import ORCH

SWEEP8 = ("run", "experiment.py", "--params", "params/sweep8.yaml")
LRS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def sweep_project(p, extra: str = "", runs_before_data: int = 0, train_ranks: int = 0):
    """make_data (reads only data.n: one computation shared by the 8 sets), train (reads train.lr:
    one per set), evaluate, and an aggregate table over the sets. Counts are tagged with the MPI
    or torchrun rank that ran them (`train@3`) and also counted plain (`train`).

    Events instead of timing, for tests about concurrency: with `runs_before_data`, make_data
    finishes only once that many `orch run`s have started their run loop (each writes its
    manifest first) and notes how many it saw in counts.txt.runs; with `train_ranks`, a train
    finishes only once trains have started on that many different ranks."""
    p.write("stages/work.py", f'''
        import os, time
        from orchestrator import stage, aggregate, PickleCacher, JsonCacher

        COUNTS = os.environ["ORCH_COUNTS"]

        def rank():
            for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "RANK"):
                if var in os.environ:
                    return os.environ[var]
            return "-"

        def count(name):
            with open(COUNTS, "a") as f:
                f.write(name + "\\n" + name + "@" + rank() + "\\n")

        from stages.counting import wait_until

        def runs_started():
            runs = os.path.join(os.path.dirname(COUNTS), ".orch", "runs")
            return [d for d in os.listdir(runs) if d != "latest" and not d.startswith(".")  # not latest's temp link
                    and os.path.exists(os.path.join(runs, d, "manifest.json"))]

        def train_ranks():
            with open(COUNTS) as f:
                return {{line.split("@")[1] for line in f.read().split() if line.startswith("train@")}}

        @stage(outputs=["data"], cachers=[PickleCacher])
        def make_data(record):
            count("make_data")
            if {runs_before_data}:
                wait_until(lambda: len(runs_started()) >= {runs_before_data}, "{runs_before_data} runs to start")
                with open(COUNTS + ".runs", "a") as f:
                    f.write(str(len(runs_started())) + "\\n")
            return list(range(record.params.data.n))

        @stage(inputs=["data"], outputs=["model"], cachers=[PickleCacher])
        def train(record, data):
            count("train")
            if {train_ranks}:
                wait_until(lambda: len(train_ranks()) >= {train_ranks}, "trains on {train_ranks} ranks")
            return sum(data) * record.params.train.lr

        @stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
        def evaluate(record, model):
            count("evaluate")
            return {{"score": round(model, 6)}}

        @aggregate(inputs=["score"], outputs=["table"], cachers=[JsonCacher])
        def table(records, score):
            count("table")
            return {{name: s["score"] for name, s in sorted(score.items())}}
        {extra}
    ''')
    p.write("experiment.py", '''
        from stages.work import make_data, train, evaluate, table

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            table(records)
    ''')
    p.write("params/sweep8.yaml", f'''
        data:
          n: 10
        train:
          lr: 0.1
        sweep:
          train.lr: {LRS}
    ''')
    return p


def plain_counts(project) -> dict[str, int]:
    return {k: v for k, v in project.counts().items() if "@" not in k}


def rank_counts(project, stage: str) -> dict[str, int]:
    return {k.split("@")[1]: v for k, v in project.counts().items() if k.startswith(stage + "@")}


def stored_output(project, node: dict, name: str):
    h = node["outputs"][name]
    (path,) = glob.glob(str(project.root / ".orch" / "objects" / h[:2] / (h[2:] + "*")))
    with open(path) as f:
        return json.load(f)


def expected_table() -> dict[str, float]:
    return {f"sweep8[train.lr={lr}]": round(sum(range(10)) * lr, 6) for lr in LRS}


def check_sweep_result(project) -> None:
    """Every node accounted for, the aggregate complete and right: it ran after all its inputs."""
    m = project.manifest()
    assert m["status"] == "ok"
    assert len(m["nodes"]) == 25
    table_node = next(n for n in m["nodes"] if n["stage"] == "table")
    assert stored_output(project, table_node, "table") == expected_table()


def test_sweep_under_parallel_4_runs_the_shared_stage_once_and_each_set_once(project):
    sweep_project(project)
    out = project.orch(*SWEEP8, "--parallel", "4")
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    check_sweep_result(project)
    statuses = [(n["stage"], n["status"]) for n in project.manifest()["nodes"]]
    assert statuses.count(("make_data", "ran")) == 1 and statuses.count(("make_data", "cached")) == 7
    assert statuses.count(("train", "ran")) == 8
    assert "25 nodes: 18 ran, 7 cached" in out.stdout
    again = project.orch(*SWEEP8, "--parallel", "4")
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    assert "25 nodes: 25 cached" in again.stdout


def test_parallel_workers_run_nodes_at_the_same_time(project):
    """The stages of four sets run at once: the coordinator never waits on one while others are ready.
    Each stage records its start, then finishes only once all four have started: run one at a time,
    the first would wait for the others in vain (and fail the run after 60 s)."""
    project.write("stages/slow.py", '''
        import os, time
        from orchestrator import stage, JsonCacher

        EVENTS = os.environ["ORCH_COUNTS"] + ".events"

        def started():
            with open(EVENTS) as f:
                return sum(line.startswith("start ") for line in f)

        @stage(outputs=["x"], cachers=[JsonCacher])
        def slow(record):
            i = record.params.i
            with open(EVENTS, "a") as f:
                f.write(f"start {i}\\n")
            deadline = time.monotonic() + 60
            while started() < 4:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stage {i}: only {started()} of 4 stages started while it waited")
                time.sleep(0.01)
            with open(EVENTS, "a") as f:
                f.write(f"end {i} {started()}\\n")
            return i
    ''')
    project.write("experiment.py", '''
        from stages.slow import slow

        def run(record):
            slow(record)
    ''')
    project.write("params/four.yaml", "i: 0\nsweep:\n  i: [1, 2, 3, 4]\n")
    project.orch("run", "experiment.py", "-p", "params/four.yaml", "-j", "4")
    events = [line.split() for line in (project.root / "counts.txt.events").read_text().splitlines()]
    starts = [e[1] for e in events if e[0] == "start"]
    ends = {e[1]: int(e[2]) for e in events if e[0] == "end"}
    assert sorted(starts) == ["1", "2", "3", "4"] and sorted(ends) == ["1", "2", "3", "4"], events
    assert set(ends.values()) == {4}, events  # every stage was still running when the last one started
    assert [e[0] for e in events[:4]] == ["start"] * 4, events  # no stage ended before all had started


def test_a_coordinator_with_threads_starts_workers_without_fork(project):
    """A library that started a thread (here: at import of the experiment) makes fork unsafe: the
    workers then come from the forkserver, and everything still runs once."""
    sweep_project(project)
    project.write("experiment.py", '''
        import threading, time
        from stages.work import make_data, train, evaluate, table

        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            table(records)
    ''')
    project.orch(*SWEEP8, "-j", "3")
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    check_sweep_result(project)


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_every_start_method_runs_the_sweep_once(project, method):
    sweep_project(project)
    project.orch(*SWEEP8, "-j", "3", env={"ORCH_START_METHOD": method})
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    check_sweep_result(project)


def test_fork_is_used_only_by_a_single_threaded_coordinator():
    import threading

    from orchestrator.executors.pool import _mp_context

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert _mp_context().get_start_method() != "fork"
    finally:
        stop.set()
        t.join()


def test_in_memory_outputs_travel_between_workers(project):
    """Outputs without a cacher exist only in memory: they are pickled to the coordinator and on to
    the worker that consumes them."""
    project.write("stages/mem.py", '''
        from orchestrator import stage, aggregate, JsonCacher

        @stage(outputs=["pair"])
        def make_pair(record):
            return {"lr": record.params.lr, "twice": record.params.lr * 2}

        @stage(inputs=["pair"], outputs=["total"], cachers=[JsonCacher])
        def add(record, pair):
            return pair["lr"] + pair["twice"]

        @aggregate(inputs=["total"], outputs=["all"], cachers=[JsonCacher])
        def collect(records, total):
            return {k: round(v, 6) for k, v in sorted(total.items())}
    ''')
    project.write("experiment.py", '''
        from stages.mem import make_pair, add, collect

        def run(record):
            add(make_pair(record))

        def aggregate(records):
            collect(records)
    ''')
    project.write("params/lr.yaml", "lr: 0\nsweep:\n  lr: [1, 2, 3]\n")
    project.orch("run", "experiment.py", "-p", "params/lr.yaml", "-j", "2")
    node = next(n for n in project.manifest()["nodes"] if n["stage"] == "collect")
    assert stored_output(project, node, "all") == {"lr[lr=1]": 3, "lr[lr=2]": 6, "lr[lr=3]": 9}


def test_unpicklable_in_memory_output_fails_with_a_clear_message(project):
    project.write("stages/bad.py", '''
        import threading
        from orchestrator import stage, JsonCacher

        @stage(outputs=["lock"])
        def make_lock(record):
            return threading.Lock()

        @stage(inputs=["lock"], outputs=["ok"], cachers=[JsonCacher])
        def use(record, lock):
            return True
    ''')
    project.write("experiment.py", '''
        from stages.bad import make_lock, use

        def run(record):
            use(make_lock(record))
    ''')
    out = project.orch("run", "experiment.py", "-j", "2", check=False)
    assert out.returncode == 1
    assert "make_lock" in out.stderr and "'lock'" in out.stderr and "cannot be pickled" in out.stderr
    assert "--parallel" in out.stderr
    assert project.statuses()[("use", "default")] == "skipped"


def failing_sweep_project(project):
    """The sweep with a `check` stage after train that fails for lr 0.3 only."""
    sweep_project(project, extra='''
        @stage(inputs=["model"], outputs=["checked"], cachers=[JsonCacher])
        def check(record, model):
            if record.params.train.lr == 0.3:
                raise ValueError("lr 0.3 is cursed")
            return model
    ''')
    project.write("experiment.py", '''
        from stages.work import make_data, train, check

        def run(record):
            check(train(make_data(record)))
    ''')


def test_a_failing_stage_in_a_worker_fails_only_its_node(project):
    failing_sweep_project(project)
    out = project.orch(*SWEEP8, "-j", "3", check=False)
    assert out.returncode == 1
    assert "check [sweep8[train.lr=0.3]]" in out.stderr and "ValueError: lr 0.3 is cursed" in out.stderr
    statuses = project.statuses()
    assert statuses[("check", "sweep8[train.lr=0.3]")] == "failed"
    assert sum(s == "ran" for (stage, _), s in statuses.items() if stage == "check") == 7


def test_a_worker_that_dies_fails_only_its_node(project):
    """os._exit kills the worker process: the pool breaks and every task in it fails; the bystanders
    are retried alone and succeed, only the culprit is reported.

    Sets 1, 2 and 3 start together on the three workers. Set 3's stage dies only once the other two
    have started (marks/start-N); those stay in their first attempt until the broken pool kills them,
    so they are in flight when it breaks, and their retries (the mark exists) complete."""
    project.write("stages/crash.py", '''
        import os, time
        from orchestrator import stage, JsonCacher

        MARKS = os.path.join(os.path.dirname(os.environ["ORCH_COUNTS"]), "marks")

        from stages.counting import wait_until

        @stage(outputs=["x"], cachers=[JsonCacher])
        def crash(record):
            i = record.params.i
            os.makedirs(MARKS, exist_ok=True)
            if i == 3:
                wait_until(lambda: {"start-1", "start-2"} <= set(os.listdir(MARKS)), "sets 1 and 2 to start")
                open(os.path.join(MARKS, "crashed"), "w").close()
                os._exit(7)
            first_attempt = not os.path.exists(os.path.join(MARKS, f"start-{i}"))
            open(os.path.join(MARKS, f"start-{i}"), "a").close()
            if first_attempt and not os.path.exists(os.path.join(MARKS, "crashed")):
                wait_until(lambda: False, f"set {i}: the pool to break and kill this worker")
            with open(os.environ["ORCH_COUNTS"], "a") as f:
                f.write(f"done{i}\\n")
            return i
    ''')
    project.write("experiment.py", '''
        from stages.crash import crash

        def run(record):
            crash(record)
    ''')
    project.write("params/six.yaml", "i: 0\nsweep:\n  i: [1, 2, 3, 4, 5, 6]\n")
    out = project.orch("run", "experiment.py", "-p", "params/six.yaml", "-j", "3", check=False, timeout=60)
    assert out.returncode == 1
    statuses = project.statuses()
    assert statuses.pop(("crash", "six[i=3]")) == "failed"
    assert set(statuses.values()) == {"ran"}  # the bystanders, retried, and the sets started after
    assert project.counts() == {f"done{i}": 1 for i in (1, 2, 4, 5, 6)}
    assert "crash [six[i=3]]" in out.stderr and "worker process died abruptly" in out.stderr
    assert {"start-1", "start-2", "crashed"} <= {p.name for p in (project.root / "marks").iterdir()}


def test_four_concurrent_runs_on_one_cache_compute_each_node_once(project):
    # make_data, which every run needs first, finishes only once all four runs have started their
    # run loops: each planned it as missing and has to wait for (and then reuse) the one computation
    sweep_project(project, runs_before_data=4)
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ORCH_CACHE", None)
    extra = [[], ["-j", "2"], [], ["-j", "3"]]
    procs = [subprocess.Popen([*ORCH, *SWEEP8, *x], cwd=project.root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for x in extra]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    runs = [json.loads(m.read_text()) for m in (project.root / ".orch" / "runs").glob("*/manifest.json")
            if m.parent.name != "latest"]
    assert len(runs) == 4
    for run in runs:
        assert {n["status"] for n in run["nodes"]} <= {"ran", "cached"}
    ran = sum(n["status"] == "ran" for run in runs for n in run["nodes"])
    assert ran == 18  # each computation stored by exactly one of the four processes
    assert (project.root / "counts.txt.runs").read_text().split() == ["4"]  # all four were running at once
    check_sweep_result(project)


def test_overwrite_recomputes_each_computation_once(project):
    sweep_project(project)
    project.orch(*SWEEP8, "-j", "4")
    project.reset_counts()
    project.orch(*SWEEP8, "-j", "4", "--overwrite")
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}
    project.reset_counts()
    project.orch(*SWEEP8, "--overwrite-stage", "make_data")  # in-process too
    assert plain_counts(project) == {"make_data": 1, "train": 8, "evaluate": 8, "table": 1}


def test_a_fully_cached_parallel_run_starts_no_worker(project, monkeypatch):
    import concurrent.futures

    from orchestrator import session

    sweep_project(project)
    project.orch(*SWEEP8)

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started for a fully cached run")

    for name in [m for m in sys.modules if m == "experiment" or m.split(".")[0] == "stages"]:
        monkeypatch.delitem(sys.modules, name)  # another project's, imported by an earlier test
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    monkeypatch.syspath_prepend(str(project.root))
    monkeypatch.setenv("ORCH_COUNTS", str(project.counts_file))
    result = session.run_experiment(session.RunOptions(experiment=project.root / "experiment.py",
                                            params=[str(project.root / "params/sweep8.yaml")], parallel=4))
    assert result.counts() == {"cached": 25}
    for name in [m for m in sys.modules if m == "experiment" or m.split(".")[0] == "stages"]:
        del sys.modules[name]


def test_workers_send_back_only_in_memory_outputs(tmp_path, monkeypatch):
    """A worker's result carries values the coordinator cannot read from the store (outputs without
    a cacher), never the stored ones: big arrays are not pickled twice through a pipe."""
    from orchestrator import session
    from orchestrator.executors import pool as executors

    root = tmp_path / "proj"
    (root / "stages_values").mkdir(parents=True)
    (root / "stages_values" / "__init__.py").write_text("")
    (root / "stages_values" / "v.py").write_text(
        "from orchestrator import stage, PickleCacher\n"
        "@stage(outputs=['big', 'small'], cachers=[PickleCacher, None])\n"
        "def both(record):\n"
        "    return list(range(1000)), 'small'\n"
        "@stage(inputs=['big', 'small'], outputs=['n'], cachers=[PickleCacher])\n"
        "def use(record, big, small):\n"
        "    return len(big), small\n")
    (root / "exp_values_only.py").write_text(
        "from stages_values.v import both, use\n"
        "def run(record):\n"
        "    use(both(record))\n")
    seen = []
    real = executors.decode_result

    def spy(data):
        result = real(data)
        seen.append((result.status, set(result.values)))
        return result

    monkeypatch.setattr(executors, "decode_result", spy)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = session.run_experiment(session.RunOptions(experiment=root / "exp_values_only.py", parallel=2))
    assert not result.failed
    assert seen == [("ran", {"small"}), ("ran", set())]


# -- lock scope: what counts as one computation ---------------------------------------------------

def test_visible_reads_follow_chains_aliases_and_constant_keys():
    from orchestrator.core.lockscope import visible_reads

    def chains(record):
        n = record.params.data.n
        p = record.params.train
        opt = p.opt
        return n, p.lr, opt["name"], record.params.get("x.y", 3), record.get_path("f"), record.name

    assert visible_reads(chains) == ("data.n", "train.lr", "train.opt.name", "x.y")

    def nested(rec):
        def inner():
            return rec.params.a.b
        return inner()

    assert visible_reads(nested) == ("a.b",)


def test_visible_reads_give_up_when_the_record_or_its_params_escape():
    from orchestrator.core.lockscope import visible_reads

    def helper(x):
        return x

    def passes_record(record):
        return helper(record)

    def passes_params(record):
        return helper(record.params)

    def iterates(record):
        return list(record.params.keys())

    def dynamic_key(record, name="a"):
        return record.params[name]

    def rebinds(record):
        p = record.params.data
        p = record.params.other
        return p.n

    for fn in (passes_record, passes_params, iterates, dynamic_key, rebinds):
        assert visible_reads(fn) is None, fn.__name__


def test_lock_scope_separates_sweep_points_and_joins_identical_computations():
    from orchestrator import stage
    from orchestrator.core.lockscope import lock_scope

    @stage(outputs=["m"])
    def fit(record):
        return record.params.train.lr

    @stage(outputs=["m"])
    def whole(record):
        return record.params.train

    @stage(outputs=["m"], ignore=["train.lr"])
    def ignoring(record):
        return record.params.train.lr

    base = {"train": {"lr": 0.1, "epochs": 3}, "data": {"n": 5}}
    other_lr = {"train": {"lr": 0.2, "epochs": 3}, "data": {"n": 5}}
    other_unread = {"train": {"lr": 0.1, "epochs": 9}, "data": {"n": 7}}
    k = "k" * 64
    assert lock_scope(fit, base, k) == lock_scope(fit, other_unread, k)  # one computation: one lock
    assert lock_scope(fit, base, k) != lock_scope(fit, other_lr, k)  # different traces: run at once
    assert lock_scope(fit, base, k).startswith(k + ".")
    assert lock_scope(whole, base, k) == k  # a sub-mapping: what of it is read is unknown
    assert lock_scope(ignoring, base, k) == lock_scope(ignoring, other_lr, k)


def test_orch_help_and_imports_never_load_mpi_or_torch():
    code = (
        "import sys\n"
        "import orchestrator, orchestrator.cli, orchestrator.executors, orchestrator.executors.mpi\n"
        "import orchestrator.executors.torchrun, orchestrator.distributed, orchestrator.executors.launch\n"
        "try:\n"
        "    orchestrator.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "orchestrator.cli.main(['run', '--help'], standalone_mode=False)\n"
        "bad = [m for m in ('mpi4py', 'torch', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "MPI_", "PMIX"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "--parallel" in out.stdout


@pytest.mark.parametrize("env,expected", [
    ({}, ("local", 0, 1)),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "TORCHELASTIC_RUN_ID": "x"}, ("torchrun", 1, 4)),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "TORCHELASTIC_RUN_ID": "x"}, ("local", 0, 1)),
    ({"RANK": "3", "WORLD_SIZE": "8"}, ("local", 0, 1)),  # not a torchrun launch: RANK alone means nothing
    ({"PMI_SIZE": "1", "PMI_RANK": "0"}, ("local", 0, 1)),  # mpiexec -n 1
    ({"OMPI_COMM_WORLD_SIZE": "1"}, ("local", 0, 1)),
])
def test_launch_detection_from_the_environment(env, expected):
    from orchestrator.executors.launch import detect_launch

    launch = detect_launch(env)
    assert (launch.kind, launch.rank, launch.size) == expected


def test_mpi_world_size_comes_from_any_launcher():
    from orchestrator.executors.launch import mpi_size_from_env

    assert mpi_size_from_env({"OMPI_COMM_WORLD_SIZE": "16"}) == 16  # Open MPI
    assert mpi_size_from_env({"PMI_SIZE": "5", "PMI_RANK": "2"}) == 5  # MPICH / Intel MPI (hydra)
    assert mpi_size_from_env({"MV2_COMM_WORLD_SIZE": "3"}) == 3  # MVAPICH2
    assert mpi_size_from_env({"PMIX_RANK": "0"}) == 0  # PMIx: size unknown, MPI must be asked
    assert mpi_size_from_env({"MPI_LOCALNRANKS": "2"}) == 0
    assert mpi_size_from_env({"HOME": "/root"}) is None
