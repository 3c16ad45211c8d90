"""`orch why`, `orch runs`, `orch show` and `orch cache ls/verify/gc` through the real CLI."""

from __future__ import annotations

from conftest import pipeline

BASE = ("run", "experiment.py", "--params", "params/base.yaml")


def test_why_explains_a_past_run_and_the_next_one(project):
    pipeline(project)
    project.orch(*BASE)
    project.orch(*BASE, "-S", "train.lr=0.4")
    past = project.orch("why").stdout
    assert "train [base]" in past and "parameter train.lr changed: 0.1 -> 0.4" in past
    assert "make_data" not in past  # it came from the cache
    assert "input model changed" in past
    only = project.orch("why", "--stage", "evaluate").stdout
    assert "evaluate" in only and "train [base]" not in only
    nxt = project.orch("why", "experiment.py", "-p", "params/base.yaml", "-S", "data.n=4").stdout
    assert "parameter data.n changed: 10 -> 4" in nxt and "pending train" in nxt
    assert project.counts() == {"make_data": 1, "train": 2, "evaluate": 2}  # why runs nothing
    same = project.orch("why", "experiment.py", "-p", "params/base.yaml", "-S", "train.lr=0.4").stdout
    assert "everything comes from the cache" in same


def test_runs_and_show(project):
    pipeline(project)
    project.orch(*BASE)
    project.orch(*BASE)
    runs = project.orch("runs").stdout.strip().splitlines()
    assert len(runs) == 2 and "3 cached" in runs[0] and "3 ran" in runs[1]
    shown = project.orch("show").stdout
    assert "cached  make_data [base]" in shown and "score=" in shown
    missing = project.orch("show", "nope", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_cache_ls_verify_gc(project):
    pipeline(project)
    project.orch(*BASE)
    ls = project.orch("cache", "ls").stdout
    assert "3 nodes" in ls and "stages.data:train" in ls
    assert "0 damaged" in project.orch("cache", "verify").stdout
    obj = next(p for p in (project.root / ".orch" / "objects").rglob("*.json"))
    obj.chmod(0o644)
    data = obj.read_bytes()
    obj.write_bytes(data[:-1] + (b"0" if data[-1:] != b"0" else b"1"))
    bad = project.orch("cache", "verify", check=False)
    assert bad.returncode == 1 and "1 damaged" in bad.stdout and "1 entries dropped" in bad.stdout
    project.reset_counts()
    project.orch(*BASE)
    assert project.counts() == {"evaluate": 1}  # only the damaged output's producer re-ran
    gc = project.orch("cache", "gc", "--grace", "0").stdout
    assert "deleted 0 objects" in gc  # the quarantined copy is not an object; all others referenced
