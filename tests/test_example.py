"""The bundled Darcy-flow example: its numerics, its training script, and the whole experiment end
to end at a tiny size (torchrun with 2 processes on CPU), run through the real `orch` CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ORCH

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the example's packages (stages, external), as orch puts them on the path

from stages.darcy import darcy_operator, permeability, solve_darcy  # noqa: E402

TINY = ["-S", "data.resolution=16", "-S", "data.n_train=32", "-S", "data.n_test=8", "-S", "train.epochs=2",
        "-S", "train.width=8", "-S", "train.modes=4", "-S", "train.batch_size=8", "-S", "inference.n=2",
        "-S", "inference.resolution=32"]


# ----------------------------------------------------------------------------------------- numerics


def test_darcy_solver_converges_at_second_order():
    """Constant k and the forcing of u = sin(pi x) sin(pi y): the error drops 4x per refinement."""
    errors = []
    for n in (8, 16, 32):
        x = (np.arange(n) + 0.5) / n
        gx, gy = np.meshgrid(x, x, indexing="ij")
        exact = np.sin(np.pi * gx) * np.sin(np.pi * gy)
        u = solve_darcy(np.ones((n, n)), 2 * np.pi**2 * exact)
        errors.append(np.abs(u - exact).max())
    assert errors[-1] < 1e-3
    assert all(3.5 < a / b < 4.5 for a, b in zip(errors, errors[1:]))


def test_darcy_solver_solves_its_discrete_system_for_random_fields():
    rng = np.random.default_rng(0)
    for kind in ("threshold", "lognormal"):
        k = permeability(5, 12, rng, kind=kind)
        u = solve_darcy(k, chunk=2)  # several chunks
        assert np.abs(darcy_operator(u, k) - 1.0).max() < 1e-8
        assert (u > 0).all()  # a positive source with zero boundary values: a positive solution
    assert set(np.unique(permeability(2, 8, rng))) <= {3.0, 12.0}
    with pytest.raises(ValueError, match="unknown permeability kind"):
        permeability(1, 8, rng, kind="gaussian")


def test_dataset_is_reproducible_from_its_seed():
    from stages.data import generate

    k1, u1 = generate(3, 8, seed=5)
    k2, u2 = generate(3, 8, seed=5)
    k3, _ = generate(3, 8, seed=6)
    assert k1.dtype == np.float32 and u1.shape == (3, 8, 8)
    assert np.array_equal(k1, k2) and np.array_equal(u1, u2) and not np.array_equal(k1, k3)


def test_model_is_resolution_independent():
    import torch

    from external.models import FNO2d

    torch.manual_seed(0)
    net = FNO2d(width=4, modes=3, layers=2)
    assert net(torch.ones(2, 16, 16)).shape == (2, 16, 16)
    assert net(torch.ones(1, 40, 40)).shape == (1, 40, 40)


def test_sweep_shares_one_dataset():
    from orchestrator.params import load_params

    sets = load_params([REPO / "params" / "sweep.yaml"])
    assert len(sets) == 4
    assert len({(s.values["train"]["width"], s.values["train"]["lr"]) for s in sets}) == 4
    assert all(s.values["data"] == sets[0].values["data"] for s in sets)


# ---------------------------------------------------------------------------------- training script


def train_cmd(data: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "external" / "train.py"), "--train-data", str(data),
            "--model-out", str(out / "model.pt"), "--metrics-out", str(out / "metrics.json"),
            "--checkpoint-dir", str(ckpt), "--epochs", "3", "--batch-size", "4", "--width", "4", "--modes", "3",
            "--layers", "2", "--device", "cpu", *extra]


def test_training_resumes_from_its_checkpoint_exactly(tmp_path):
    """Stopped after 1 epoch and rerun: the same model, bit for bit, as 3 epochs in one go."""
    import torch

    from orchestrator.checkpoint import load_checkpoint
    from stages.data import generate

    k, u = generate(8, 8, seed=0)
    data = tmp_path / "train.npz"
    np.savez(data, k=k, u=u)
    run = lambda *args: subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)  # noqa: E731

    straight = run(*train_cmd(data, tmp_path / "a", tmp_path / "ck-a"))
    assert straight.returncode == 0, straight.stderr
    first = run(*train_cmd(data, tmp_path / "b", tmp_path / "ck-b", "--stop-after-epochs", "1"))
    assert first.returncode == 0 and "stopping after 1 epoch" in first.stdout, first.stderr
    assert not (tmp_path / "b" / "model.pt").exists()
    resumed = run(*train_cmd(data, tmp_path / "b", tmp_path / "ck-b"))
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr

    a, b = (load_checkpoint(tmp_path / d / "model.pt", device="cpu") for d in ("a", "b"))
    assert type(a).__name__ == "FNO2d" and not a.training
    assert list(a.state_dict()) == list(b.state_dict())  # zip below would stop at the shorter one
    for name, pa in a.state_dict().items():
        assert torch.equal(pa, b.state_dict()[name]), name
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert [e["loss"] for e in ma["epochs"]] == [e["loss"] for e in mb["epochs"]]
    assert mb["resumed_from_epoch"] == 1 and ma["resumed_from_epoch"] is None
    assert len(list((tmp_path / "ck-a").glob("epoch-*.pt"))) == 2  # keeps the last two

    # a checkpoint written with other settings is never resumed from
    other = run(*train_cmd(data, tmp_path / "c", tmp_path / "ck-b", "--lr", "0.01"))
    assert other.returncode != 0 and "written with other settings (lr differ)" in other.stderr


# --------------------------------------------------------------------------------------- end to end


@pytest.fixture
def example(tmp_path) -> Path:
    """A copy of the bundled example (so its cache is a temp directory, not the repo's)."""
    root = tmp_path / "example"
    root.mkdir()
    shutil.copy(REPO / "experiment.py", root)
    for d in ("stages", "external", "params"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def orch(root: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ORCH, *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_bundled_example_end_to_end_then_fully_cached(example):
    import torch

    from orchestrator import load

    run = ("run", "experiment.py", "--params", "params/default.yaml", *TINY)
    first = orch(example, *run)
    assert "5 ran" in first.stdout, first.stdout
    assert "--nproc_per_node 2 external/train.py" in first.stdout  # the command, printed before it runs
    assert "2 process(es) on cpu" in first.stdout
    cache = example / ".orch"

    evaluation = load("evaluation", cache=cache)
    assert 0 < evaluation["rel_l2"] < 1.5 and evaluation["n_test"] == 8 and evaluation["trained_on"] == "cpu"
    metrics = load("train_metrics", cache=cache)
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 2 and metrics["train_time_s"] > 0

    # the training script logged its loss per epoch into the node's metrics (orchestrator.metrics.log,
    # under torchrun, rank 0 only); evaluate's JSON numbers are final metrics; orch compare shows both
    nodes = {n["stage"]: n for n in json.loads((example / ".orch/runs/latest/manifest.json").read_text())["nodes"]}
    loss = nodes["train"]["metrics"]["loss"]
    assert loss["n"] == 2 and loss["step"] == 2 and loss["last"] == pytest.approx(metrics["epochs"][-1]["loss"])
    assert nodes["evaluate"]["metrics"]["rel_l2"]["last"] == evaluation["rel_l2"]
    table = orch(example, "compare", "--format", "csv").stdout.splitlines()
    header, row = table[0].split(","), dict(zip(table[0].split(","), table[1].split(",")))
    assert {"loss", "rel_l2", "duration_s"} <= set(header) and row["param_set"] == "default"
    assert float(row["rel_l2"]) == pytest.approx(evaluation["rel_l2"], rel=1e-3)

    # the stored checkpoint rebuilds the model on the CPU (no class named) and reproduces the stages' results
    model = load("model", cache=cache, device="cpu")
    assert type(model).__name__ == "FNO2d" and next(model.parameters()).device.type == "cpu"
    test_path = load("test_data", cache=cache)
    data = np.load(test_path)
    with torch.inference_mode():
        pred = model(torch.from_numpy(data["k"])).numpy()
    err = np.linalg.norm((pred - data["u"]).reshape(8, -1), axis=1) / np.linalg.norm(data["u"].reshape(8, -1), axis=1)
    assert err.mean() == pytest.approx(evaluation["rel_l2"], rel=1e-5)
    predictions = Path(load("predictions", cache=cache))
    saved = np.load(predictions / "predictions.npz")
    assert saved["k"].shape == (2, 32, 32)  # twice the training resolution
    with torch.inference_mode():
        again = model(torch.from_numpy(saved["k"])).numpy()
    np.testing.assert_allclose(again, saved["u_pred"], rtol=1e-5, atol=1e-7)
    assert (predictions / "predictions.png").stat().st_size > 0

    files = Path(load("comparison_files", cache=cache))
    rows = (files / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("set,width,") and rows[1].startswith("default,8,")
    assert (files / "comparison.png").stat().st_size > 0

    # the run's report draws the loss curve and shows the plots the stages stored
    html = (example / ".orch/runs/latest/report.html").read_text()
    assert html.count('class="orch-curve"') == 2 and "train · loss" in html and "train · lr" in html
    for alt in ("predictions/predictions.png", "comparison_files/comparison.png"):
        assert re.search(f'<img src="data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}" alt="{alt}"', html), alt

    # the second run comes entirely from the cache
    second = orch(example, *run)
    assert "5 cached" in second.stdout and "ran" not in second.stdout.replace("run ", "")
    # the process count does not change the model: no re-training on a machine with more cores,
    # and the comparison did not read it either
    third = orch(example, *run, "-S", "train.nproc=1")
    assert "cached  train [default]" in third.stdout and "5 cached" in third.stdout
