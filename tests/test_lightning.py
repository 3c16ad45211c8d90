"""Issue 12: Lightning checkpoints as artifacts, resumable external Lightning training, OrchLogger.

Through the real CLI on temp projects (tests/lightning_project.py): a LightningModule trained for a
few epochs on the CPU by an external script and by a stage in-process; checkpoints come back as the
right class without the loading code naming it; a killed training resumes from its last epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import lightning_project
import pytest
from conftest import ORCH, wait_for

pytest.importorskip("lightning")

RUN = ("run", "experiment.py", "-p", "params/p.yaml")
TRAIN_ONLY = ("run", "train_only.py", "-p", "params/p.yaml")
# One thread per process: these models are tiny, and several trainers may share two cores.
ENV = {"OMP_NUM_THREADS": "1"}


def python(project, code: str) -> dict:
    """Run `code` in a fresh interpreter in the project (as a notebook would) and return the JSON
    it prints last."""
    env = {**os.environ, **ENV}
    env.pop("ORCH_METRICS_FILE", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def node(manifest: dict, stage: str) -> dict:
    [n] = [n for n in manifest["nodes"] if n["stage"] == stage]
    return n


def test_lightning_checkpoints_load_as_their_class_and_the_logger_fills_the_metrics(project):
    lightning_project.write(project, epochs=3)
    project.orch(*RUN, env=ENV, timeout=300)
    m = project.manifest()
    assert {n["stage"]: n["status"] for n in m["nodes"]} == {"train": "ran", "train_inproc": "ran", "evaluate": "ran"}
    # OrchLogger: Lightning's per-epoch loss in the node's stream, from the external script (through
    # ORCH_METRICS_FILE) and from the stage that called trainer.fit itself; "epoch" left out
    train, inproc = node(m, "train")["metrics"], node(m, "train_inproc")["metrics"]
    assert set(train) == {"train_loss"} and train["train_loss"]["n"] == 3
    assert set(inproc) == {"inproc_train_loss"} and inproc["inproc_train_loss"]["n"] == 3
    assert train["train_loss"]["step"] == 11  # Lightning's global step: 3 epochs of 4 batches
    # the downstream stage received both checkpoints as Regressor modules, nobody naming the class
    out = python(project, """
import json, orchestrator
r = orchestrator.load("report")
m = orchestrator.load("model", device="cpu")
state = orchestrator.load("model", training_state=True, skip=("loops",))
raw = orchestrator.load("model", model=False, skip=("optimizer_states", "loops", "callbacks"))
print(json.dumps({"report": r, "cls": f"{type(m).__module__}.{type(m).__name__}", "width": m.hparams.width,
                  "device": str(next(m.parameters()).device), "state": sorted(state), "epoch": state["epoch"],
                  "raw": sorted(raw), "inproc": type(orchestrator.load("model_inproc")).__name__}))
""")
    report = out["report"]
    assert report["classes"] == ["Regressor", "Regressor"] and report["widths"] == [8, 8]
    assert out["cls"] == "models.Regressor" and out["width"] == 8 and out["device"] == "cpu"
    assert out["inproc"] == "Regressor"
    # training state on request (seed 002: drop components at load)
    assert out["state"] == ["callbacks", "epoch", "global_step", "lr_schedulers", "model", "optimizer_states"]
    assert out["epoch"] == 3
    assert "optimizer_states" not in out["raw"] and "loops" not in out["raw"]
    assert {"state_dict", "hyper_parameters", "orch_class"} <= set(out["raw"])
    # a second run trains nothing: both checkpoints come from the cache
    project.orch(*RUN, env=ENV, timeout=300)
    assert {n["status"] for n in project.manifest()["nodes"]} == {"cached"}


def test_killed_lightning_training_resumes_from_its_last_finished_epoch(project, tmp_path):
    """The cookbook's recipe: ModelCheckpoint(save_last=True) into record.checkpoint_dir(), resumed
    with the last checkpoint. Killed (orch and the trainer, as a lost machine would be) before epoch
    2, the re-run trains epochs 2 and 3 only, and ends with exactly the weights of an uninterrupted
    run: seeded init, deterministic CPU kernels, a data order drawn from (seed, epoch) alone
    (models.EpochShuffle), and weights, Adam moments and step counters restored from the
    checkpoint. (A plain shuffling DataLoader draws from the global RNG, which a resume does not
    restore: weights would then be close, not equal.)"""
    lightning_project.write(project, epochs=4)
    first_log, second_log, ref_log = (tmp_path / n for n in ("first.log", "second.log", "ref.log"))
    marker = tmp_path / "stalled"
    env = {**os.environ, **ENV, "ORCH_TEST_STALL_AT": "2", "ORCH_TEST_MARKER": str(marker),
           "ORCH_TEST_EPOCH_LOG": str(first_log)}
    orch = subprocess.Popen([*ORCH, *TRAIN_ONLY], cwd=project.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        trainer_group = int(wait_for(lambda: marker.exists() and marker.read_text(), "the trainer to stall before epoch 2",
                                     timeout=300))
    finally:
        os.killpg(orch.pid, signal.SIGKILL)
        orch.wait(timeout=30)
    os.killpg(trainer_group, signal.SIGKILL)
    assert first_log.read_text().split() == ["0", "1"]

    project.orch(*TRAIN_ONLY, env={**ENV, "ORCH_TEST_EPOCH_LOG": str(second_log)}, timeout=300)
    assert second_log.read_text().split() == ["2", "3"]  # resumed: epochs 0 and 1 were not trained again
    assert node(project.manifest(), "train")["metrics"]["train_loss"]["n"] == 2  # this run's epochs

    project.orch(*TRAIN_ONLY, "--cache", str(tmp_path / "ref-cache"),
                 env={**ENV, "ORCH_TEST_EPOCH_LOG": str(ref_log)}, timeout=300)
    assert ref_log.read_text().split() == ["0", "1", "2", "3"]
    out = python(project, f"""
import json, torch, orchestrator
a = orchestrator.load("model", device="cpu").state_dict()
b = orchestrator.load("model", device="cpu", cache={str(tmp_path / "ref-cache")!r}).state_dict()
print(json.dumps({{"same_keys": sorted(a) == sorted(b), "equal": all(torch.equal(a[k], b[k]) for k in a),
                   "max_diff": max(float((a[k] - b[k]).abs().max()) for k in a)}}))
""")
    assert out["same_keys"] and out["equal"], out  # bit for bit, not merely close


CHECKS = r'''
import json, os, tempfile, warnings
import torch
import lightning.pytorch as pl
import models
from orchestrator import LightningCheckpointCacher, Record
from orchestrator.cachers import OutputTarget
from orchestrator.errors import CheckpointError, StageOutputError
from orchestrator.integrations.lightning import OrchLogger, RecordClass, save_checkpoint
from orchestrator.record import current_record
from pathlib import Path

def trainer(**kw):
    return pl.Trainer(max_epochs=1, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)

def error(f):
    try:
        f()
    except (CheckpointError, StageOutputError) as e:
        return f"{type(e).__name__}: {e}"
    return None

out = {}
# OrchLogger in a stage (a Record made by hand keeps the lines), outside orch (nothing), in a script
rec = Record()
token = current_record.set(rec)
t = trainer(logger=OrchLogger())
t.fit(models.Regressor(width=4), models.loader())
current_record.reset(token)
out["logged"] = rec.logged
trainer(logger=OrchLogger()).fit(models.Regressor(width=4), models.loader())   # nowhere: no error
os.environ["ORCH_METRICS_FILE"] = "stream.jsonl"
trainer(logger=OrchLogger(prefix="x/", skip=())).fit(models.Regressor(width=4), models.loader())
del os.environ["ORCH_METRICS_FILE"]
out["stream"] = [json.loads(line)["metrics"] for line in open("stream.jsonl")]

c = LightningCheckpointCacher()
t.save_checkpoint("plain.ckpt")          # no RecordClass: the class is not recorded
save_checkpoint(t, "recorded.ckpt")      # the helper adds RecordClass
out["no_class"] = error(lambda: c.load("plain.ckpt"))
out["with_cls"] = type(c.load("plain.ckpt", cls=models.Regressor)).__name__
out["recorded"] = type(c.load("recorded.ckpt")).__name__
save_checkpoint(t, "weights.ckpt", weights_only=True)   # Lightning calls no callback for these
weights = torch.load("weights.ckpt", weights_only=False)
out["weights_only"] = [type(c.load("weights.ckpt")).__name__, "optimizer_states" in weights]
ck = torch.load("recorded.ckpt", weights_only=False)
ck["orch_class"] = "gone.models:Regressor"
torch.save(ck, "gone.ckpt")
out["gone"] = error(lambda: c.load("gone.ckpt"))
out["device"] = error(lambda: c.load("recorded.ckpt", device="cuda:0"))

t2 = trainer(logger=False, callbacks=[RecordClass()])
t2.fit(models.Forgetful(width=4), models.loader())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t2.save_checkpoint("forgetful.ckpt")
out["forgetful_warning"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
out["forgetful"] = error(lambda: c.load("forgetful.ckpt"))
out["forgetful_given"] = c.load("forgetful.ckpt", hparams={"width": 4}).net[0].out_features

staging = Path(tempfile.mkdtemp())
Path("notes.txt").write_text("not a checkpoint")
target = OutputTarget("train", "model", str(staging / "obj"), staging)
out["not_ckpt"] = error(lambda: c.prepare(os.path.abspath("notes.txt"), target))
torch.save({"weights": torch.zeros(2)}, "plain_torch.pt")
out["plain_torch"] = error(lambda: c.prepare(os.path.abspath("plain_torch.pt"), target))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    c.prepare(os.path.abspath("plain.ckpt"), target)
out["store_warning"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(json.dumps(out))
'''


def test_lightning_checkpoint_errors_and_the_logger_outside_the_cli(project):
    lightning_project.write(project)
    out = python(project, CHECKS)
    # the logger: a hand-made Record keeps the lines; a script writes ORCH_METRICS_FILE's stream
    assert len(out["logged"]) == 1 and set(out["logged"][0]["metrics"]) == {"train_loss"}  # one epoch, no "epoch"
    assert out["logged"][0]["step"] == 3
    assert [sorted(m) for m in out["stream"]] == [["x/epoch", "x/train_loss"]]
    # no class recorded: a clear error saying how to record it, and cls= as the way out
    assert "does not record which LightningModule" in out["no_class"] and "RecordClass()" in out["no_class"]
    assert "cls=" in out["no_class"] and out["with_cls"] == "Regressor" and out["recorded"] == "Regressor"
    assert out["weights_only"] == ["Regressor", False]
    assert out["gone"].startswith("CheckpointError") and "cannot import the model class gone.models:Regressor" in out["gone"]
    assert "'cuda:0' is not available" in out["device"]
    # save_hyperparameters() not called: warned at save, refused at load naming the argument
    assert len(out["forgetful_warning"]) == 1 and "save_hyperparameters()" in out["forgetful_warning"][0]
    assert "init arguments width were not saved" in out["forgetful"] and "self.save_hyperparameters()" in out["forgetful"]
    assert "hparams={'width': ...}" in out["forgetful"] and out["forgetful_given"] == 4
    # storing: a file that is no Lightning checkpoint is refused; a class-less one is kept, with a warning
    assert out["not_ckpt"].startswith("StageOutputError: stage train: output 'model'") and "not a torch" in out["not_ckpt"]
    assert "no Lightning 'state_dict'" in out["plain_torch"] and "CheckpointCacher" in out["plain_torch"]
    assert len(out["store_warning"]) == 1 and "does not record its LightningModule class" in out["store_warning"][0]
