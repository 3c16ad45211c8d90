"""Metrics: record.log in stages, orchestrator.metrics.log in external scripts, the JSONL stream per
node, the summary a cached node keeps, and `orch compare` over one or several runs."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import COUNTING, Project

from orchestrator import Record, metrics
from orchestrator.metrics import MetricsError

EXPERIMENT = COUNTING + '''
import sys
from orchestrator import stage, JsonCacher, PickleCacher, run_external

@stage(outputs=["model"], cachers=[PickleCacher])
def train(record):
    count("train")
    p = record.params.train
    loss = 1.0
    for epoch in range(p.epochs):
        loss *= 1 - p.lr
        record.log(step=epoch, loss=loss)
    run_external([sys.executable, "script.py"])
    return {"w": loss}

@stage(inputs=["model"], outputs=["evaluation"], cachers=[JsonCacher])
def evaluate(record, model):
    count("evaluate")
    return {"rel_l2": model["w"] * 2, "acc": 1 - model["w"], "history": [1, 2], "config": {"lr": 3.0},
            "device": "cpu"}

def run(record):
    train(record)
    evaluate(record)
'''

SCRIPT = '''
from orchestrator import metrics
for i in range(3):
    metrics.log(val_loss=1.0 / (i + 1))
metrics.log(step=10, epoch_s=0.5)
'''

PARAMS = '''
name: sweep
train: {epochs: 4, lr: 0.1, seed: 0}
sweep:
  train.lr: [0.1, 0.3, 0.2]
'''


@pytest.fixture
def project(tmp_path) -> Project:
    p = Project(tmp_path)
    p.write("experiment.py", EXPERIMENT)
    p.write("script.py", SCRIPT)
    p.write("params.yaml", PARAMS)
    return p


def _nodes(project: Project, run: str = "latest") -> dict[tuple[str, str], dict]:
    return {(n["stage"], n["param_set"]): n for n in project.manifest(run)["nodes"]}


def test_logged_metrics_stream_to_the_node_and_stay_with_the_cached_entry(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    nodes = _nodes(project)
    train = nodes[("train", "sweep[train.lr=0.3]")]
    expected = [0.7 ** (i + 1) for i in range(4)]
    loss = train["metrics"]["loss"]
    assert loss["n"] == 4 and loss["step"] == 3 and loss["last"] == pytest.approx(expected[-1])
    assert loss["min"] == pytest.approx(expected[-1]) and loss["min_step"] == 3
    assert loss["max"] == pytest.approx(expected[0]) and loss["max_step"] == 0
    # the external script's lines went to the same node; without a step each metric counts 0, 1, 2
    assert train["metrics"]["val_loss"]["n"] == 3 and train["metrics"]["val_loss"]["last"] == pytest.approx(1 / 3)
    assert train["metrics"]["epoch_s"]["step"] == 10
    stream = Path(train["series"])
    assert stream.parent == project.root / ".orch" / "runs" / project.manifest()["run_id"] / "metrics"
    series = metrics.read_series(stream)
    assert [v for _, v in series["loss"]] == pytest.approx(expected)
    assert [s for s, _ in series["val_loss"]] == [0, 1, 2]
    # JSON outputs: their top-level numbers are final metrics (not lists, nested objects or text)
    ev = nodes[("evaluate", "sweep[train.lr=0.3]")]["metrics"]
    assert set(ev) == {"rel_l2", "acc"} and ev["rel_l2"]["step"] is None
    assert ev["rel_l2"]["last"] == pytest.approx(2 * expected[-1])

    project.reset_counts()
    project.orch("run", "experiment.py", "-p", "params.yaml")
    assert project.counts() == {}
    cached = _nodes(project)[("train", "sweep[train.lr=0.3]")]
    assert cached["status"] == "cached" and cached["metrics"] == train["metrics"]
    assert cached["computed_s"] > 0  # what it took when it ran
    stored = Path(cached["series"])  # the stream was stored with the outputs: curves of a cached node
    assert stored.is_relative_to(project.root / ".orch" / "objects") and stored.read_bytes() == stream.read_bytes()


def test_orch_compare_shows_the_parameters_that_differ_and_marks_the_best(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    out = project.orch("compare").stdout.splitlines()
    header = out[0].split()
    # train.epochs and train.seed are the same in every row: not shown; train.lr differs
    assert header[:2] == ["param_set", "train.lr"] and "train.epochs" not in header
    assert {"loss", "val_loss", "rel_l2", "acc", "duration_s"} <= set(header)
    rows = {line.split()[1]: line for line in out[1:4]}
    # the fastest learning rate has the lowest loss and rel_l2 and the highest acc; val_loss and
    # epoch_s are the same in every row: no contest, nothing marked
    assert rows["0.3"].count("*") == 3 and "*" not in rows["0.1"] + rows["0.2"]
    assert "highest acc" in out[-1] and "lowest" in out[-1] and "val_loss" not in out[-1]

    data = json.loads(project.orch("compare", "--format", "json").stdout)
    assert data["best"]["acc"]["higher_is_better"] is True and data["best"]["loss"]["higher_is_better"] is False
    best_row = data["rows"][data["best"]["loss"]["row"]]
    assert best_row["params"] == {"train.lr": 0.3}
    assert data["rows"][data["best"]["acc"]["row"]]["param_set"] == "sweep[train.lr=0.3]"


def test_orch_compare_sorts_selects_and_writes_csv_and_markdown(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    asc = list(csv.DictReader(io.StringIO(project.orch("compare", "--sort", "loss", "-f", "csv").stdout)))
    assert [r["train.lr"] for r in asc] == ["0.3", "0.2", "0.1"]
    desc = list(csv.DictReader(io.StringIO(project.orch("compare", "--sort=-train.lr", "-f", "csv").stdout)))
    assert [r["train.lr"] for r in desc] == ["0.3", "0.2", "0.1"]
    only = list(csv.DictReader(io.StringIO(project.orch("compare", "-m", "rel*", "--all-params", "-f", "csv").stdout)))
    assert set(only[0]) == {"param_set", "train.epochs", "train.lr", "train.seed", "rel_l2", "duration_s"}
    md = project.orch("compare", "-f", "md", "--sort", "rel_l2").stdout.splitlines()
    assert md[0].startswith("| param_set | train.lr |") and md[1].startswith("|---|")
    assert "**" in md[2] and "**" not in md[4]  # the best row comes first and is marked


def test_orch_compare_across_runs_names_the_run_of_each_row(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    first = project.manifest()["run_id"]
    project.write("params.yaml", PARAMS.replace("[0.1, 0.3, 0.2]", "[0.1, 0.5]"))
    project.orch("run", "experiment.py", "-p", "params.yaml")
    second = project.manifest()["run_id"]
    rows = list(csv.DictReader(io.StringIO(project.orch("compare", first, second[:-2], "-f", "csv").stdout)))
    assert [(r["run"], r["train.lr"]) for r in rows] == [(first, "0.1"), (first, "0.3"), (first, "0.2"),
                                                         (second, "0.1"), (second, "0.5")]
    assert rows[3]["loss"] == rows[0]["loss"]  # the same set, cached: its metrics are the entry's


def test_orch_compare_qualifies_a_metric_several_stages_report_and_shows_failures(tmp_path):
    p = Project(tmp_path)
    p.write("experiment.py", COUNTING + '''
from orchestrator import stage, JsonCacher

@stage(outputs=["a"], cachers=[JsonCacher])
def first(record):
    record.log(loss=record.params.x)
    return {"loss": 1.0}

@stage(inputs=["a"], outputs=["b"], cachers=[JsonCacher])
def second(record, a):
    if record.params.x == 3:
        raise ValueError("no")
    record.log(loss=record.params.x * 10)
    return {}

def run(record):
    first(record)
    second(record)
''')
    p.write("params.yaml", "x: 1\nsweep:\n  x: [1, 2, 3]\n")
    proc = p.orch("run", "experiment.py", "-p", "params.yaml", check=False)
    assert proc.returncode == 1
    rows = list(csv.DictReader(io.StringIO(p.orch("compare", "-f", "csv").stdout)))
    assert [r["first.loss"] for r in rows] == ["1", "2", "3"]  # logged wins over the JSON output's number
    assert [r["second.loss"] for r in rows] == ["10", "20", "-"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    failed = next(n for n in p.manifest()["nodes"] if n["status"] == "failed")
    assert "series" not in failed  # it logged nothing before failing


def test_a_failed_node_keeps_its_partial_stream(tmp_path):
    p = Project(tmp_path)
    p.write("experiment.py", '''
from orchestrator import stage, JsonCacher

@stage(outputs=["a"], cachers=[JsonCacher])
def train(record):
    for step in range(3):
        record.log(step=step, loss=1.0 / (step + 1))
    raise RuntimeError("diverged")

def run(record):
    train(record)
''')
    p.write("params.yaml", "x: 1\n")
    assert p.orch("run", "experiment.py", "-p", "params.yaml", check=False).returncode == 1
    node = p.manifest()["nodes"][0]
    assert node["status"] == "failed" and "metrics" not in node
    assert [s for s, _ in metrics.read_series(node["series"])["loss"]] == [0, 1, 2]


def test_compare_errors_are_clear(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    for args, says in ((["--sort", "nope"], "--sort nope: no such column; metrics: loss"),
                       (["-m", "zzz*"], "no metric matches zzz*"),
                       (["nosuchrun"], "no run 'nosuchrun'")):
        proc = project.orch("compare", *args, check=False)
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_script_logging_outside_orch_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.ENV_VAR, raising=False)
    metrics.log(loss=1.0)  # no destination: a no-op, no file, no error
    stream = tmp_path / "m.jsonl"
    monkeypatch.setenv(metrics.ENV_VAR, str(stream))
    monkeypatch.setenv("RANK", "1")
    metrics.log(loss=1.0)
    assert not stream.exists()  # only rank 0 writes by default
    metrics.log(loss=2.0, all_ranks=True)
    monkeypatch.setenv("RANK", "0")
    metrics.log(step=5, loss=3.0)
    assert metrics.read_series(stream) == {"loss": [(0, 2.0), (5, 3.0)]}


def test_stream_reader_tolerates_a_truncated_line_and_counts_steps_per_metric(tmp_path):
    stream = tmp_path / "m.jsonl"
    for step, values in ((None, {"a": 1}), (None, {"a": 2, "b": 5}), (7, {"a": 3}), (None, {"a": 4})):
        metrics.append(str(stream), step, values)
    with open(stream, "ab") as f:
        f.write(b'{"t": 1, "step": 9, "metrics": {"a": ')  # a killed writer
    assert metrics.read_series(stream) == {"a": [(0, 1), (1, 2), (7, 3), (8, 4)], "b": [(0, 5)]}
    assert metrics.last_values(stream) == {"a": 4, "b": 5}
    nan = metrics.summarize({"loss": [(0, 2.0), (1, float("nan")), (2, 1.0)]})["loss"]
    assert nan["min"] == 1.0 and nan["max"] == 2.0 and nan["n"] == 3 and nan["last"] == 1.0


def test_stream_reader_reads_clean_and_damaged_streams_alike(tmp_path):
    """A clean stream is parsed in one go (as a JSON array); damage anywhere falls back to line by
    line, and two broken lines that would make one valid object when joined are still two bad lines."""
    good = [b'{"t": 1, "step": null, "metrics": {"a": 1, "b": NaN}}', b'{"t": 1, "step": 4, "metrics": {"a": 2.5}}',
            b"", b'{"t": 1, "step": null, "metrics": {"a": 3, "bad": "x", "flag": true}}', b"7",
            b'{"t": 1, "step": 1.5, "metrics": {"a": 9}}']  # valid JSON, but not all of it stream lines
    clean = metrics.read_lines(good)
    assert clean["a"] == [(0, 1), (4, 2.5), (5, 3)] and math.isnan(clean["b"][0][1]) and set(clean) == {"a", "b"}
    split = [b'{"t": 1, "step": null, "metrics": {"a": 1}', b'"c": 2}', b'{"t": 1, "step": 2, "metrics": {"a": 7}}']
    assert metrics.read_lines(split) == {"a": [(2, 7)]}  # joined, the first two would parse as one object
    for damaged in (good[:2] + [b"garbage"] + good[2:], good + [b"[1, 2]"]):  # line by line: the same
        assert metrics.read_lines(damaged).keys() == clean.keys() and metrics.read_lines(damaged)["a"] == clean["a"]


def test_logged_values_must_be_numbers():
    np = pytest.importorskip("numpy")
    record = Record({"x": 1})
    record.log(step=np.int64(2), loss=np.float32(0.5), count=3)
    assert record.logged[0]["step"] == 2 and record.logged[0]["metrics"] == {"loss": 0.5, "count": 3}
    with pytest.raises(MetricsError, match="metric 'loss': expected a number, got str"):
        record.log(loss="low")
    with pytest.raises(MetricsError, match="at least one metric"):
        record.log(step=1)
    with pytest.raises(MetricsError, match="step must be an integer"):
        record.log(step=1.5, loss=1.0)
    assert math.isinf(json.loads(metrics.encode(None, {"loss": float("inf")}))["metrics"]["loss"])


def test_a_stage_logging_a_bad_value_fails_naming_the_metric(tmp_path):
    p = Project(tmp_path)
    p.write("experiment.py", '''
from orchestrator import stage, JsonCacher

@stage(outputs=["a"], cachers=[JsonCacher])
def train(record):
    record.log(loss=[1, 2])
    return {}

def run(record):
    train(record)
''')
    p.write("params.yaml", "x: 1\n")
    proc = p.orch("run", "experiment.py", "-p", "params.yaml", check=False)
    assert proc.returncode == 1 and "metric 'loss': expected a number" in proc.stderr
    p.write("experiment.py", (p.root / "experiment.py").read_text().replace("loss=[1, 2]", "loss=10**400"))
    proc = p.orch("run", "experiment.py", "-p", "params.yaml", check=False)
    assert proc.returncode == 1 and "metric 'loss': an int of 1329 bits, beyond a float's range" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_json_output_with_an_int_no_float_holds_is_stored_but_is_no_final_metric(tmp_path):
    """A huge int in a JSON output is the stage's business; as a final metric it would break every
    comparison (OverflowError in `orch compare` and the report)."""
    p = Project(tmp_path)
    p.write("experiment.py", '''
from orchestrator import stage, JsonCacher

@stage(outputs=["counts"], cachers=[JsonCacher])
def count(record):
    return {"n": 10**400, "acc": 0.5}

def run(record):
    count(record)
''')
    p.write("params.yaml", "x: 1\n")
    for _ in range(2):
        proc = p.orch("run", "experiment.py", "-p", "params.yaml")
        assert "Traceback" not in proc.stderr
    assert "0.5" in p.orch("compare").stdout
    node = p.manifest()["nodes"][0]
    assert set(node["metrics"]) == {"acc"}


def test_gc_keeps_the_streams_of_live_entries(project):
    project.orch("run", "experiment.py", "-p", "params.yaml")
    stored = {Path(n["series"]) for n in _nodes(project).values() if n["stage"] == "train"}
    project.orch("run", "experiment.py", "-p", "params.yaml")
    stored = {Path(n["series"]) for n in _nodes(project).values() if n["stage"] == "train"}
    assert len(stored) == 3 and all(p.is_relative_to(project.root / ".orch" / "objects") for p in stored)
    project.orch("cache", "gc", "--grace", "0")
    assert all(p.exists() for p in stored)


def test_run_external_routes_the_stream_only_to_its_own_node(tmp_path, monkeypatch):
    """A stale ORCH_METRICS_FILE in orch's own environment never reaches a script."""
    monkeypatch.setenv(metrics.ENV_VAR, str(tmp_path / "stale.jsonl"))
    from orchestrator.executors.external import run_external

    script = tmp_path / "s.py"
    script.write_text("from orchestrator import metrics\nmetrics.log(x=1)\n")
    run_external([sys.executable, str(script)], echo=False)
    assert not (tmp_path / "stale.jsonl").exists()
