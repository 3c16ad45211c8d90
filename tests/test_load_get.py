"""Artifacts of past runs: orchestrator.load() and `orch get`, on real runs of the real CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from conftest import pipeline

BASE = ("run", "experiment.py", "--params", "params/base.yaml")
SWEEP = ("run", "experiment.py", "--params", "params/sweep.yaml")


def py(project, code: str, check: bool = True) -> subprocess.CompletedProcess:
    """Python in a fresh process in the project directory (as a notebook or script would)."""
    env = {k: v for k, v in os.environ.items() if k != "ORCH_CACHE"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=project.root, capture_output=True,
                          text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_load_latest_and_older_runs(project):
    pipeline(project)
    project.orch(*BASE)
    first = project.manifest()["run_id"]
    project.orch(*BASE, "-S", "train.lr=0.5")
    out = py(project, f"""
        import orchestrator
        print(orchestrator.load("model"))
        print(orchestrator.load("model", run="{first}"))
        print(orchestrator.load("model", run="{first[:-2]}"))  # a unique prefix
        print(orchestrator.load("score"))
        print(orchestrator.load("data", param_set="base")[:3])
    """)
    assert out.stdout.split("\n")[:5] == ["45.0", "9.0", "9.0", "{'score': 46.0}", "[0, 2, 4]"]


def test_load_from_elsewhere_with_cache_or_experiment_dir(project, tmp_path):
    pipeline(project)
    project.orch(*BASE)
    from orchestrator import load

    assert load("score", experiment_dir=project.root) == {"score": 90 * 0.1 + 1}
    assert load("score", cache=project.root / ".orch") == {"score": 90 * 0.1 + 1}


def test_sweep_needs_a_param_set_and_lists_them(project):
    pipeline(project)
    project.orch(*SWEEP)
    from orchestrator import load
    from orchestrator.errors import ParamSetNotFoundError, RunNotFoundError

    with pytest.raises(ParamSetNotFoundError) as e:
        load("model", experiment_dir=project.root)
    assert "sweep[train.lr=0.1], sweep[train.lr=0.2]" in str(e.value) and "param_set=" in str(e.value)
    assert load("model", param_set="sweep[train.lr=0.2]", experiment_dir=project.root) == pytest.approx(90 * 0.2)
    with pytest.raises(ParamSetNotFoundError, match=r"no parameter set 'nope'; its sets: sweep\[train.lr=0.1\]"):
        load("model", param_set="nope", experiment_dir=project.root)
    assert isinstance(ParamSetNotFoundError("x"), RunNotFoundError)


def test_missing_run_and_artifact_list_what_exists(project, tmp_path, monkeypatch):
    pipeline(project)
    from orchestrator import load
    from orchestrator.errors import ArtifactNotFoundError, RunNotFoundError

    with pytest.raises(RunNotFoundError, match="nothing has run yet|no orch cache"):
        load("model", experiment_dir=project.root)
    project.orch(*BASE)
    run_id = project.manifest()["run_id"]
    with pytest.raises(ArtifactNotFoundError, match="no stored artifact 'modle' in run .*; stored artifacts: data, model, score"):
        load("modle", experiment_dir=project.root)
    with pytest.raises(RunNotFoundError, match=f"no run 'r-1' .*runs: {run_id}"):
        load("model", run="r-1", experiment_dir=project.root)
    monkeypatch.chdir(tmp_path)  # restored after the test: later tests keep their working directory
    with pytest.raises(RunNotFoundError, match="no orch cache"):
        load("model")


def test_failed_stage_is_named_when_its_artifact_is_asked_for(project):
    pipeline(project)
    project.write("stages/data.py", (project.root / "stages/data.py").read_text().replace(
        'count("train")', 'count("train"); raise ValueError("boom")'))
    project.orch(*BASE, check=False)
    proc = project.orch("get", "model", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no stored artifact 'model'" in proc.stderr and "train failed" in proc.stderr
    assert "stored artifacts: data" in proc.stderr


def test_orch_get_copies_a_writable_file(project):
    pipeline(project)
    project.orch(*BASE)
    out = project.orch("get", "model", "-o", "model.pkl")
    assert "model of run" in out.stdout and "stage train" in out.stdout
    copied = project.root / "model.pkl"
    assert pickle.loads(copied.read_bytes()) == 90 * 0.1
    assert copied.stat().st_mode & 0o200  # the user's copy, not a read-only store object
    # into an existing directory, named after the artifact; no silent overwrite
    (project.root / "out").mkdir()
    project.orch("get", "score", "-o", "out")
    assert json.loads((project.root / "out" / "score.json").read_text()) == {"score": 10.0}
    again = project.orch("get", "score", "-o", "out", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    project.orch("get", "score", "-o", "out", "--force")


def test_orch_get_sweep_and_errors(project):
    pipeline(project)
    project.orch(*SWEEP)
    proc = project.orch("get", "model", check=False)
    assert proc.returncode == 1 and "--param-set" in proc.stderr
    project.orch("get", "model", "--param-set", "sweep[train.lr=0.2]", "-o", "m.pkl")
    assert pickle.loads((project.root / "m.pkl").read_bytes()) == pytest.approx(18.0)
    proc = project.orch("get", "model", "--run", "nope", check=False)
    assert proc.returncode == 1 and "no run 'nope'" in proc.stderr


def test_orch_get_directories_and_file_references(project):
    project.write("data/raw.txt", "raw\n")
    project.write("stages/files.py", '''
        import os
        from orchestrator import stage, FileReferenceCacher

        @stage(outputs=["report"], cachers=[FileReferenceCacher])
        def report(record):
            d = record.get_dir("report")
            os.makedirs(os.path.join(d, "figs"))
            with open(os.path.join(d, "figs", "a.txt"), "w") as f:
                f.write("figure")
            return d

        @stage(outputs=["weights"], cachers=[FileReferenceCacher])
        def weights(record):
            p = record.get_path("weights.bin")
            with open(p, "wb") as f:
                f.write(b"\\x00\\x01")
            return p

        @stage(outputs=["raw"], cachers=[FileReferenceCacher])
        def raw(record):
            return "data/raw.txt"
    ''')
    project.write("experiment.py", '''
        from stages.files import report, weights, raw

        def run(record):
            report(record); weights(record); raw(record)
    ''')
    project.orch("run", "experiment.py")
    project.orch("get", "report", "-o", "rep")
    assert (project.root / "rep" / "figs" / "a.txt").read_text() == "figure"
    (project.root / "rep" / "figs" / "b.txt").write_text("writable")  # the copy is the user's
    (project.root / "dl").mkdir()
    project.orch("get", "weights", "-o", "dl")
    assert (project.root / "dl" / "weights.bin").read_bytes() == b"\x00\x01"  # keeps its own name
    project.orch("get", "raw", "-o", "dl")
    assert (project.root / "dl" / "raw.txt").read_text() == "raw\n"

    from orchestrator import load
    from orchestrator.errors import ArtifactLoadError

    assert load("raw", experiment_dir=project.root) == str(project.root / "data" / "raw.txt")
    (project.root / "data" / "raw.txt").write_text("edited since the run\n")
    with pytest.raises(ArtifactLoadError, match="raw.txt changed since the stage .* re-run the experiment"):
        load("raw", experiment_dir=project.root)


def test_only_cacher_classes_are_rebuilt_from_entries():
    from orchestrator.artifacts.retrieve import cacher_from_identity
    from orchestrator.cachers import JsonCacher, PickleCacher
    from orchestrator.errors import ArtifactLoadError

    assert isinstance(cacher_from_identity(["orchestrator.cachers:PickleCacher", {"protocol": 4}]), PickleCacher)
    assert cacher_from_identity(["orchestrator.cachers:JsonCacher", {"indent": None}]).indent is None
    assert isinstance(cacher_from_identity(["orchestrator.cachers:JsonCacher", None]), JsonCacher)
    for bad in (["os:system", None], ["builtins:dict", {}], ["subprocess:Popen", {"args": "ls"}]):
        with pytest.raises(ArtifactLoadError, match="not a Cacher subclass"):
            cacher_from_identity(bad)
    with pytest.raises(ArtifactLoadError, match="cannot be imported"):
        cacher_from_identity(["no_such_module_xyz:Thing", None])
    with pytest.raises(ArtifactLoadError, match="no usable cacher"):
        cacher_from_identity("garbage")


# --------------------------------------------------------------------------------- torch end to end


TORCH_STAGES = '''
import subprocess, sys
import torch
from orchestrator import stage, Lazy, CheckpointCacher, JsonCacher
from stages.counting import count
from stages.models import Net


@stage(outputs=["model"], cachers=[CheckpointCacher])
def train(record):
    count("train")
    torch.manual_seed(0)
    return Net(record.params.width)


@stage(outputs=["ext_model"], cachers=[CheckpointCacher])
def train_external(record):
    """Like a torchrun script: a separate process writes the checkpoint into the staging area."""
    count("train_external")
    out = record.get_path("ext.pt")
    subprocess.run([sys.executable, "external/train.py", out, str(record.params.width)], check=True)
    return out


@stage(outputs=["loaded_model"], cachers=[CheckpointCacher])
def train_external_loaded(record):
    out = record.get_path("ext2.pt")
    subprocess.run([sys.executable, "external/train.py", out, "3"], check=True)
    return CheckpointCacher.load_path(out)


@stage(inputs=["model", Lazy("ext_model"), "loaded_model"], outputs=["report"], cachers=[JsonCacher])
def evaluate(record, model, ext_model, loaded_model):
    count("evaluate")
    ext = ext_model.load(device="cpu")
    x = torch.ones(1, 2)
    return {"model": type(model).__name__, "width": model.lin.out_features, "out": model(x).tolist(),
            "ext": type(ext["model"]).__name__, "epoch": ext["epoch"], "ext_class": ext_model.metadata.get("kind"),
            "loaded": sorted(loaded_model)}
'''

EXTERNAL = '''
import sys
import torch
from orchestrator.checkpoint import save_checkpoint

sys.path.insert(0, ".")
from stages.models import Net

if __name__ == "__main__":
    out, width = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(1)
    model = Net(width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(model, out, optimizer=opt, epoch=7)
'''


def test_checkpoints_end_to_end(project):
    pytest.importorskip("torch")
    project.write("stages/models.py", '''
        import torch
        from orchestrator.checkpoint import capture_init_args

        @capture_init_args
        class Net(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.lin = torch.nn.Linear(2, width)

            def forward(self, x):
                return self.lin(x)
    ''')
    project.write("stages/train.py", TORCH_STAGES)
    project.write("external/train.py", EXTERNAL)
    project.write("params/p.yaml", "width: 4\n")
    project.write("experiment.py", '''
        from stages.train import train, train_external, train_external_loaded, evaluate

        def run(record):
            train(record); train_external(record); train_external_loaded(record); evaluate(record)
    ''')
    run = ("run", "experiment.py", "--params", "params/p.yaml")
    project.orch(*run)
    project.orch("get", "report", "-o", "report.json")
    report = json.loads((project.root / "report.json").read_text())
    assert report["model"] == "Net" and report["width"] == 4 and report["ext"] == "Net" and report["epoch"] == 7
    assert report["ext_class"] == "file" and report["loaded"] == ["epoch", "model", "optimizer"]
    project.reset_counts()
    project.orch(*run)
    assert project.counts() == {}

    # a later notebook / inference script: rebuilt on the CPU without naming the class
    out = py(project, """
        import torch, orchestrator
        m = orchestrator.load("model", device="cpu")
        ck = orchestrator.load("ext_model", skip=("optimizer",))
        print(type(m).__name__, m.lin.out_features, next(m.parameters()).device, sorted(ck), ck["model"].lin.out_features)
        print(m(torch.ones(1, 2)).tolist())
    """)
    first, second = out.stdout.splitlines()[:2]
    assert first == "Net 4 cpu ['epoch', 'model'] 4"
    assert json.loads(second) == report["out"]

    # orch get gives a checkpoint file that load_checkpoint reads anywhere
    project.orch("get", "ext_model", "-o", "ext.pt")
    out = py(project, """
        from orchestrator.checkpoint import load_checkpoint
        ck = load_checkpoint("ext.pt", device="cpu", optimizer=False)
        print(sorted(ck), type(ck["model"]).__name__)
    """)
    assert out.stdout.strip() == "['epoch', 'model'] Net"
