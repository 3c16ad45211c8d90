"""Checkpoints: orchestrator.checkpoint (what external scripts use) and CheckpointCacher."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from orchestrator.cachers import CheckpointCacher, OutputTarget  # noqa: E402
from orchestrator.checkpoint import capture_init_args, load_checkpoint, save_checkpoint  # noqa: E402
from orchestrator.errors import CheckpointError, StageOutputError  # noqa: E402


@capture_init_args
class MLP(nn.Module):
    def __init__(self, width, depth=2, *, act="relu"):
        super().__init__()
        self.act = act
        layers = [nn.Linear(3, width)] + [nn.Linear(width, width) for _ in range(depth - 1)] + [nn.Linear(width, 1)]
        self.layers = nn.ModuleList(layers)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x) * self.scale


class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, 1)


class WithInitArgsAttr(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.init_args = {"width": width}
        self.lin = nn.Linear(width, 1)


class NoArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


class SubOverrides(MLP):
    """Overrides __init__ without @capture_init_args: its arguments differ from MLP's."""

    def __init__(self):
        super().__init__(4, depth=1)


class SubInherits(MLP):
    """Inherits MLP's __init__: the same arguments rebuild it."""


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


X = torch.arange(6, dtype=torch.float32).reshape(2, 3)


# ------------------------------------------------------------------------- save/load_checkpoint


def test_model_alone_comes_back_as_the_rebuilt_module(tmp_path):
    torch.manual_seed(0)
    model = MLP(8, depth=3, act="relu").eval()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert type(loaded) is MLP and loaded is not model
    assert _same_weights(model, loaded) and not loaded.training
    assert torch.equal(loaded(X), model(X))
    assert loaded._orch_init_args == {"args": [8], "kwargs": {"depth": 3, "act": "relu"}}
    assert os.listdir(tmp_path) == ["m.pt"]  # written through a temp name, nothing left over


def test_training_mode_is_kept(tmp_path):
    save_checkpoint(MLP(4).train(), tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt").training


def test_optimizer_and_extras_come_back_as_a_dict_and_resume(tmp_path):
    torch.manual_seed(0)
    model = MLP(4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(X).sum().backward()
    opt.step()
    save_checkpoint(model, tmp_path / "c.pt", optimizer=opt, epoch=3, losses=[0.5, 0.25])

    ck = load_checkpoint(tmp_path / "c.pt")
    assert set(ck) == {"model", "optimizer", "epoch", "losses"}
    assert ck["epoch"] == 3 and ck["losses"] == [0.5, 0.25]
    assert isinstance(ck["model"], MLP) and _same_weights(ck["model"], model)
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.01

    # resume: load into existing instances
    model2 = MLP(4)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    ck2 = load_checkpoint(tmp_path / "c.pt", model=model2, optimizer=opt2)
    assert ck2["model"] is model2 and ck2["optimizer"] is opt2 and _same_weights(model2, model)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.state_dict()["state"][0]["step"] == 1

    skipped = load_checkpoint(tmp_path / "c.pt", optimizer=False, skip=("losses",))
    assert set(skipped) == {"model", "epoch"}


def test_model_false_gives_the_raw_state_dict(tmp_path):
    model = MLP(4)
    save_checkpoint(model, tmp_path / "m.pt")
    state = load_checkpoint(tmp_path / "m.pt", model=False)
    assert set(state) == set(model.state_dict())


@pytest.mark.parametrize("make, given", [
    (lambda: NeedsArgs(5), {"width": 5}),  # explicit init_args=
    (lambda: WithInitArgsAttr(5), None),  # the model's init_args attribute
    (lambda: NoArgs(), None),  # nothing required
    (lambda: SubInherits(5, depth=1), None),  # inherits a decorated __init__
])
def test_init_args_sources(tmp_path, make, given):
    model = make()
    save_checkpoint(model, tmp_path / "m.pt", init_args=given)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is type(model) and _same_weights(loaded, model)


def test_unknown_init_args_still_save_and_say_how_to_load(tmp_path):
    model = NeedsArgs(5)
    save_checkpoint(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "m.pt")
    msg = str(e.value)
    assert "NeedsArgs" in msg and "capture_init_args" in msg and "init_args=" in msg and "model=NeedsArgs(...)" in msg
    into = NeedsArgs(5)
    assert load_checkpoint(tmp_path / "m.pt", model=into) is into and _same_weights(into, model)


def test_undecorated_subclass_records_nothing_rather_than_wrong_args(tmp_path):
    model = SubOverrides()
    assert "_orch_init_args" not in model.__dict__
    save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")  # no required args: rebuilt with none, correctly
    assert type(loaded) is SubOverrides and _same_weights(loaded, model)


def test_init_args_that_are_not_json_are_reported(tmp_path):
    model = MLP(4, act=object())
    save_checkpoint(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not JSON-able"):
        load_checkpoint(tmp_path / "m.pt")


def test_weights_that_do_not_fit_name_the_class(tmp_path):
    save_checkpoint(MLP(4), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "m.pt", model=MLP(5))


def test_data_parallel_wrapper_is_unwrapped(tmp_path):
    model = MLP(4)
    save_checkpoint(nn.DataParallel(model), tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is MLP and _same_weights(loaded, model)


def test_devices(tmp_path):
    save_checkpoint(MLP(4), tmp_path / "m.pt")
    assert next(load_checkpoint(tmp_path / "m.pt", device="cpu").parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="not available"):
            load_checkpoint(tmp_path / "m.pt", device="cuda:0")


def test_gpu_checkpoint_falls_back_to_cpu_by_default():
    """The default map_location keeps a tensor's device when it exists here, else the CPU."""
    from orchestrator.artifacts.checkpoint import _restore_or_cpu

    storage = torch.zeros(1).untyped_storage()
    assert _restore_or_cpu(storage, "cpu") is None  # torch's default restore: stays on the CPU
    if not torch.cuda.is_available():
        assert _restore_or_cpu(storage, "cuda:0") is storage
        assert _restore_or_cpu(storage, "cuda:3") is storage


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="expects an nn.Module"):
        save_checkpoint({"w": torch.zeros(1)}, tmp_path / "x.pt")


def test_python_objects_need_weights_only_false(tmp_path):
    import numpy as np

    save_checkpoint(MLP(4), tmp_path / "m.pt", stats=np.arange(3))
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_checkpoint(tmp_path / "m.pt")
    assert list(load_checkpoint(tmp_path / "m.pt", weights_only=False)["stats"]) == [0, 1, 2]


def test_plain_torch_files_load_as_is_or_into_a_model(tmp_path):
    model = MLP(4)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert set(load_checkpoint(tmp_path / "sd.pt")) == set(model.state_dict())
    into = MLP(4)
    assert load_checkpoint(tmp_path / "sd.pt", model=into) is into and _same_weights(into, model)


def _run_py(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(cwd)}, timeout=120)


def test_another_process_rebuilds_without_naming_the_class(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        from orchestrator.checkpoint import capture_init_args

        @capture_init_args
        class Net(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.lin = torch.nn.Linear(2, width)
    """))
    save = _run_py("""
        import torch
        from mymodels import Net
        from orchestrator.checkpoint import save_checkpoint
        torch.manual_seed(1)
        save_checkpoint(Net(7), "net.pt")
    """, tmp_path)
    assert save.returncode == 0, save.stderr
    load = _run_py("""
        from orchestrator.checkpoint import load_checkpoint
        m = load_checkpoint("net.pt", device="cpu")
        print(type(m).__module__, type(m).__name__, m.lin.out_features)
    """, tmp_path)
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["mymodels", "Net", "7"]


def test_class_defined_in_a_guarded_script_is_found_in_that_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        from orchestrator.checkpoint import capture_init_args, save_checkpoint

        @capture_init_args
        class Net(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.lin = torch.nn.Linear(2, width)

        if __name__ == "__main__":
            save_checkpoint(Net(3), "net.pt", epoch=1)
            open("ran.txt", "a").write("x")
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ck = load_checkpoint(tmp_path / "net.pt")
    assert type(ck["model"]).__name__ == "Net" and ck["model"].lin.out_features == 3
    assert (tmp_path / "ran.txt").read_text() == "x"  # importing the script did not run it again

    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(script.read_text().replace('if __name__ == "__main__":\n    ', "").replace(
        '\n    open("ran.txt"', '\nopen("ran.txt"'))
    proc = subprocess.run([sys.executable, str(unguarded)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(CheckpointError, match="move the class into a module"):
        load_checkpoint(tmp_path / "net.pt")


def test_importing_orchestrator_does_not_import_torch_or_numpy():
    code = ("import sys, orchestrator, orchestrator.cachers, orchestrator.checkpoint, orchestrator.artifacts.retrieve, "
            "orchestrator.artifacts.lightning, orchestrator.integrations; "
            "print([m for m in ('torch', 'numpy', 'lightning', 'pytorch_lightning', 'pina') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- CheckpointCacher


def _target(tmp_path: Path, name: str = "model") -> OutputTarget:
    staging = tmp_path / "staging"
    (staging / "out").mkdir(parents=True, exist_ok=True)
    return OutputTarget("train", name, str(staging / "out" / f"{name}.pt"), staging)


def test_cacher_round_trips_a_module_with_metadata(tmp_path):
    c = CheckpointCacher()
    model = MLP(6).eval()
    path, ext, meta = c.prepare(model, _target(tmp_path))
    assert ext == ".pt"
    assert meta["class"] == f"{MLP.__module__}:MLP" and meta["init_args"] == {"args": [6], "kwargs": {}}
    assert meta["kind"] == "module" and meta["device"] == "cpu" and meta["weights_only"] is True
    loaded = c.load(path, meta)
    assert type(loaded) is MLP and torch.equal(loaded(X), model(X))
    assert c.load(path, meta, device="cpu", model=False).keys() == model.state_dict().keys()


def test_cacher_training_state_dict_form(tmp_path):
    model = MLP(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    c = CheckpointCacher()
    path, _, meta = c.prepare({"model": model, "optimizer": opt, "epoch": 2}, _target(tmp_path))
    assert meta["extras"] == ["epoch", "optimizer"]
    full = c.load(path, meta)
    assert set(full) == {"model", "optimizer", "epoch"} and isinstance(full["model"], MLP)
    assert set(c.load(path, meta, skip=("optimizer",))) == {"model", "epoch"}
    only_model = c.prepare({"model": model}, _target(tmp_path, "m2"))
    assert set(c.load(only_model[0], only_model[2])) == {"model"}  # saved as a dict, loaded as a dict


def test_cacher_tensors_and_dicts_of_tensors(tmp_path):
    c = CheckpointCacher()
    t = torch.arange(5.0)
    path, _, meta = c.prepare(t, _target(tmp_path, "t"))
    assert meta["kind"] == "object" and torch.equal(c.load(path, meta), t)
    d = {"a": torch.ones(2), "b": [torch.zeros(1), 3]}
    path, _, meta = c.prepare(d, _target(tmp_path, "d"))
    back = c.load(path, meta)
    assert torch.equal(back["a"], d["a"]) and back["b"][1] == 3


def test_cacher_keeps_arbitrary_objects_loadable(tmp_path):
    import numpy as np

    c = CheckpointCacher()
    path, _, meta = c.prepare({"w": torch.ones(1), "np": np.arange(2)}, _target(tmp_path, "o"))
    assert meta["weights_only"] is False
    assert list(c.load(path, meta)["np"]) == [0, 1]


def test_cacher_stores_a_checkpoint_file_returned_by_path(tmp_path):
    c = CheckpointCacher()
    target = _target(tmp_path)
    staged = target.staging / "files" / "model.pt"
    staged.parent.mkdir(parents=True)
    save_checkpoint(MLP(4), staged)
    path, ext, meta = c.prepare(str(staged), target)
    assert not staged.exists() and path == target.path  # the stage's own file is moved, not copied
    assert type(c.load(path, meta)) is MLP

    outside = tmp_path / "elsewhere.pt"
    save_checkpoint(MLP(4), outside)
    path, _, _ = c.prepare(outside, _target(tmp_path, "m2"))
    assert outside.exists() and Path(path).exists()  # a file outside the stage's area is left alone

    with pytest.raises(StageOutputError, match="does not exist"):
        c.prepare(str(tmp_path / "nope.pt"), _target(tmp_path, "m3"))
    with pytest.raises(StageOutputError, match="directory"):
        c.prepare(str(tmp_path), _target(tmp_path, "m4"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(StageOutputError, match="not a torch checkpoint"):
        c.prepare(str(tmp_path / "text.pt"), _target(tmp_path, "m5"))


def test_load_path_reads_external_checkpoints(tmp_path):
    save_checkpoint(MLP(4), tmp_path / "ext.pt", epoch=5)
    ck = CheckpointCacher.load_path(tmp_path / "ext.pt", device="cpu")
    assert ck["epoch"] == 5 and isinstance(ck["model"], MLP)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        CheckpointCacher.load_path(tmp_path / "missing.pt")
