"""Why a node ran, in sweeps (issue 16, item 1): every difference from the previous computation of the
same stage on the same parameter set, never a sibling sweep point's; the same sentence in the
console, the manifest, the report and `orch why` (predicted and recorded)."""

from __future__ import annotations

import html
import re

SWEEP = ("run", "experiment.py", "-p", "params/sweep.yaml")

STAGES = """
from orchestrator import stage, aggregate, PickleCacher, JsonCacher
from stages.counting import count

@stage(outputs=["data"], cachers=[PickleCacher])
def make_data(record):
    count("make_data")
    return list(range(record.params.data.n))

@stage(inputs=["data"], outputs=["model"], cachers=[JsonCacher])
def train(record, data):
    count("train")
    p = record.params.train
    return {"w": sum(data) * p.lr * p.epochs - p.l2}

@aggregate(inputs=["model"], outputs=["table"], cachers=[JsonCacher])
def table(record, model):
    count("table")
    return {name: m["w"] for name, m in sorted(model.items())}
"""


def _project(project):
    project.write("stages/s.py", STAGES)
    project.write("experiment.py", """
        from stages.s import make_data, train, table

        def run(record):
            train(make_data(record))

        def aggregate(records):
            table(records)
    """)
    project.write("params/base.yaml", "data:\n  n: 4\ntrain:\n  lr: 0.01\n  epochs: 200\n  l2: 0.001\n")
    project.write("params/sweep.yaml", "extends: base.yaml\nsweep:\n  train.lr: [0.01, 0.1]\n  train.l2: [0.001, 0.0]\n")


def _reasons_everywhere(project, stage: str) -> dict[str, str]:
    """{set: reason} of `stage` in the latest run, asserting the console, the manifest, the report and
    `orch why` all say exactly the same."""
    m = project.manifest()
    recorded = {n["param_set"]: n["reason"] for n in m["nodes"] if n["stage"] == stage and n["status"] == "ran"}
    report = html.unescape((project.root / ".orch" / "runs" / m["run_id"] / "report.html").read_text())
    why = project.orch("why", "--stage", stage).stdout
    for set_name, reason in recorded.items():
        assert reason in report, (set_name, reason)
        assert re.search(rf"{re.escape(stage)} \[{re.escape(set_name)}\]\s+{re.escape(reason)}$", why, re.M), why
    return recorded


def _last_console(out: str, stage: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(rf"^ran\s+{stage} \[(.+?)\] [\d.]+s  \((.*)\)$", out, re.M)}


def test_first_sweep_run_says_never_ran_then_new_sets_say_new(project):
    _project(project)
    out = project.orch(*SWEEP).stdout
    assert set(_last_console(out, "train").values()) == {"never ran"}
    project.write("params/sweep.yaml", "extends: base.yaml\nsweep:\n  train.lr: [0.01, 0.1, 0.5]\n"
                                       "  train.l2: [0.001, 0.0]\n")
    out = project.orch(*SWEEP).stdout
    reasons = _last_console(out, "train")
    assert set(reasons) == {"sweep[train.lr=0.5,train.l2=0.001]", "sweep[train.lr=0.5,train.l2=0.0]"}
    assert set(reasons.values()) == {"new parameter set"}


def test_a_parameter_change_is_named_for_every_sweep_point_alike(project):
    _project(project)
    project.orch(*SWEEP)
    project.write("params/base.yaml", "data:\n  n: 4\ntrain:\n  lr: 0.01\n  epochs: 300\n  l2: 0.001\n")
    predicted = project.orch("why", *SWEEP[1:], "--stage", "train").stdout
    out = project.orch(*SWEEP).stdout
    console = _last_console(out, "train")
    assert len(console) == 4 and set(console.values()) == {"parameter train.epochs changed: 200 -> 300"}
    assert _reasons_everywhere(project, "train") == console
    assert predicted.count("parameter train.epochs changed: 200 -> 300") == 4


def test_every_difference_is_listed(project):
    _project(project)
    project.orch(*SWEEP)
    project.write("params/base.yaml", "data:\n  n: 4\ntrain:\n  lr: 0.01\n  epochs: 300\n  l2: 0.001\n")
    project.write("stages/s.py", STAGES.replace("p.lr * p.epochs", "p.epochs * p.lr"))
    out = project.orch(*SWEEP).stdout
    reasons = set(_last_console(out, "train").values())
    assert len(reasons) == 1
    reason = reasons.pop()
    assert "code changed: stages/s.py" in reason and "(train)" in reason
    assert "parameter train.epochs changed: 200 -> 300" in reason


def test_a_code_edit_is_the_reason_for_every_point_never_a_siblings_parameter(project):
    _project(project)
    project.orch(*SWEEP)
    project.write("stages/s.py", STAGES.replace("- p.l2", "- p.l2 * 1"))
    out = project.orch(*SWEEP).stdout
    reasons = _last_console(out, "train")
    assert len(reasons) == 4 and all(r.startswith("code changed: stages/s.py") for r in reasons.values()), reasons
    assert not any("l2" in r for r in reasons.values())
    assert _reasons_everywhere(project, "train") == reasons


def test_a_shared_computation_explains_itself_per_set(project):
    """make_data reads only data.*: the sweep's four points share one computation; only one point
    ran it (the others were served from the cache), yet each explains its own change."""
    _project(project)
    project.orch(*SWEEP)
    project.write("params/base.yaml", "data:\n  n: 5\ntrain:\n  lr: 0.01\n  epochs: 200\n  l2: 0.001\n")
    predicted = project.orch("why", *SWEEP[1:], "--stage", "make_data").stdout
    assert predicted.count("parameter data.n changed: 4 -> 5") == 4, predicted


def test_aggregate_reasons_are_summarized(project):
    _project(project)
    project.orch(*SWEEP)
    project.write("params/sweep.yaml", "extends: base.yaml\nsweep:\n  train.lr: [0.01, 0.1, 0.5]\n"
                                       "  train.l2: [0.001, 0.0]\n")
    out = project.orch(*SWEEP).stdout
    reason = _last_console(out, "table")["aggregate"]
    assert reason.startswith("parameter sets: +sweep[train.lr=0.5,train.l2=0.001] +sweep[train.lr=0.5,train.l2=0.0]")
    assert "added/removed" not in reason
    project.write("params/base.yaml", "data:\n  n: 4\ntrain:\n  lr: 0.01\n  epochs: 300\n  l2: 0.001\n")
    out = project.orch(*SWEEP).stdout
    assert _last_console(out, "table")["aggregate"] == "input model changed for 6 sets"


# -- partial aggregates (issue 16, item 5) -----------------------------------------------------------

PARTIAL = """
import json
from orchestrator import stage, aggregate, JsonCacher
from stages.counting import count

@stage(outputs=["score"], cachers=[JsonCacher])
def train(record):
    count("train")
    if record.params.lr > 1:
        raise ValueError(f"diverged at lr={record.params.lr}")
    return {"score": record.params.lr * 10}

@aggregate(inputs=["score"], outputs=["best"], cachers=[JsonCacher], partial=True)
def best(record, score):
    count("best")
    return {"sets": sorted(score), "failed": record.failed_sets}

@aggregate(inputs=["score"], outputs=["all"], cachers=[JsonCacher])
def strict(record, score):
    count("strict")
    return sorted(score)
"""


def _partial_project(project, lrs: list, aggregates=("best", "strict")) -> None:
    project.write("stages/p.py", PARTIAL)
    calls = "\n".join(f"    {a}(records)" for a in aggregates)
    project.write("experiment.py", f"from stages.p import train, {', '.join(aggregates)}\n\n"
                                   f"def run(record):\n    train(record)\n\ndef aggregate(records):\n{calls}\n")
    project.write("params/p.yaml", f"lr: {lrs[0]}\nsweep:\n  lr: {lrs}\n")


def test_a_partial_aggregate_runs_on_the_sets_that_succeeded(project):
    import json

    _partial_project(project, [0.1, 0.2, 5.0])
    out = project.orch("run", "experiment.py", "-p", "params/p.yaml", check=False)
    assert out.returncode == 1  # a node failed: the run says so
    statuses = project.statuses()
    assert statuses[("train", "p[lr=5.0]")] == "failed"
    assert statuses[("best", "aggregate")] == "ran" and statuses[("strict", "aggregate")] == "skipped"
    assert "partial: without p[lr=5.0]" in out.stdout
    best = next(n for n in project.manifest()["nodes"] if n["stage"] == "best")
    stored = next(p for p in (project.root / ".orch" / "objects").rglob("*.json")
                  if best["outputs"]["best"].startswith(p.parent.name) and p.name.startswith(best["outputs"]["best"][2:]))
    result = json.loads(stored.read_text())
    assert result["sets"] == ["p[lr=0.1]", "p[lr=0.2]"]
    assert list(result["failed"]) == ["p[lr=5.0]"] and "train[p[lr=5.0]] failed" in result["failed"]["p[lr=5.0]"]
    project.reset_counts()
    again = project.orch("run", "experiment.py", "-p", "params/p.yaml", check=False)
    assert project.counts() == {"train": 1}  # only the failing point retried; best is cached as partial
    assert again.returncode == 1
    project.write("params/p.yaml", "lr: 0.1\nsweep:\n  lr: [0.1, 0.2, 0.5]\n")
    project.reset_counts()
    project.orch("run", "experiment.py", "-p", "params/p.yaml")
    assert project.counts() == {"train": 1, "best": 1, "strict": 1}


def test_a_partial_aggregate_with_no_set_left_is_skipped(project):
    _partial_project(project, [5.0, 6.0], aggregates=("best",))
    project.orch("run", "experiment.py", "-p", "params/p.yaml", check=False)
    assert project.statuses()[("best", "aggregate")] == "skipped"
