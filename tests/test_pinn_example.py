"""The PINN example (examples/pinn, issue 12) at a tiny size, through the real CLI on a copy of it:
PINA's Lightning trainer inside a stage, its losses in the metrics stream, the error against the
exact solution as a metric, the plots, and the aggregate over a width x learning-rate sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Project

pytest.importorskip("pina")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pinn"
EPOCHS = 15


def test_pinn_example_trains_plots_and_compares_a_sweep(tmp_path):
    project = Project(tmp_path / "pinn")
    shutil.copytree(EXAMPLE, project.root, ignore=shutil.ignore_patterns(".orch", "__pycache__"))
    project.write("params/tiny.yaml", f"""
        extends: base.yaml
        data:
          n_interior: 64
          n_boundary: 16
        train:
          epochs: {EPOCHS}
        eval:
          grid: 11
        sweep:
          train.lr: [0.01, 0.003]
    """)
    args = ("run", "experiment.py", "-p", "params/tiny.yaml")
    project.orch(*args, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    m = project.manifest()
    sets = ["tiny[train.lr=0.01]", "tiny[train.lr=0.003]"]
    assert project.statuses() == {**{(s, n): "ran" for n in sets for s in ("train", "plot")},
                                  ("compare", "aggregate"): "ran"}
    for row in (n for n in m["nodes"] if n["stage"] == "train"):
        metrics = row["metrics"]
        # PINA's losses, one value per epoch, through OrchLogger; the error against the exact solution
        assert {"train_loss", "D_loss", "boundary_loss"} <= set(metrics)
        assert metrics["train_loss"]["n"] == EPOCHS and "epoch" not in metrics
        assert 0 < metrics["rel_l2"]["last"] < 10
    out = project.root / "out"
    project.orch("get", "comparison", "-o", str(out / "comparison.json"))
    comparison = json.loads((out / "comparison.json").read_text())
    errors = [r["rel_l2"] for r in comparison["rows"]]
    assert sorted(r["set"] for r in comparison["rows"]) == sorted(sets) and errors == sorted(errors)
    assert comparison["best"] == comparison["rows"][0]["set"]
    project.orch("get", "comparison_plot", "-o", str(out / "comparison.png"))
    project.orch("get", "plot", "--param-set", "lr=0.01", "-o", str(out / "solution.png"))
    for png in ("comparison.png", "solution.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # orch compare ranks the sets by the same metric
    table = json.loads(project.orch("compare", "-m", "rel_l2", "-f", "json").stdout)
    assert table["metrics"] == ["rel_l2"] and table["params"] == ["train.lr"]
    assert table["rows"][table["best"]["rel_l2"]["row"]]["param_set"] == comparison["best"]
    # nothing re-trains on a second run
    project.orch(*args, env={"OMP_NUM_THREADS": "1"})
    assert set(project.statuses().values()) == {"cached"}
