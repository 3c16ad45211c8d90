"""A small Lightning project for the tests of issue 12: a LightningModule, an external training script
(the curifactory cookbook's torchrun recipe, checkpointing every epoch and resuming), an in-process
training stage, and a stage consuming both models without naming their class."""

from __future__ import annotations

MODELS = '''
import torch
import lightning.pytorch as pl


class Regressor(pl.LightningModule):
    """y = sin(3x) by a small MLP: trained in seconds on a CPU."""

    def __init__(self, width, lr=0.02):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Forgetful(Regressor):
    """Takes a required argument but never calls save_hyperparameters()."""

    def __init__(self, width):
        pl.LightningModule.__init__(self)
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
        self.lr = 0.02

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def dataset(n=64):
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    return torch.utils.data.TensorDataset(x, torch.sin(3 * x))


class EpochShuffle(torch.utils.data.Sampler):
    """A new order every epoch, drawn from (seed, epoch) alone: a resumed run sees the same order as
    an uninterrupted one (a plain shuffle draws from the global RNG, which a resume does not restore).
    Lightning calls set_epoch before each epoch."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def loader(seed=0):
    data = dataset()
    return torch.utils.data.DataLoader(data, batch_size=16, sampler=EpochShuffle(len(data), seed))
'''

TRAIN_SCRIPT = '''
"""External Lightning training: checkpoints every epoch into --ckpt-dir, resumes from last.ckpt."""
import argparse
import os
import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

if __name__ == "__main__":  # the project's modules, as the experiment imports them
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from orchestrator.integrations.lightning import OrchLogger, RecordClass  # noqa: E402


class TestHooks(pl.Callback):
    """For the tests only: ORCH_TEST_EPOCH_LOG gets one line per epoch this process trained;
    ORCH_TEST_STALL_AT=k makes it stop before epoch k (epochs 0..k-1 done and checkpointed), write
    its process group to ORCH_TEST_MARKER and wait there to be killed."""

    def on_train_epoch_start(self, trainer, module):
        if os.environ.get("ORCH_TEST_STALL_AT") == str(trainer.current_epoch):
            marker = os.environ["ORCH_TEST_MARKER"]
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpgid(0)))
            os.replace(marker + ".tmp", marker)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.05)
            raise SystemExit("never killed")

    def on_train_epoch_end(self, trainer, module):
        if os.environ.get("ORCH_TEST_EPOCH_LOG"):
            with open(os.environ["ORCH_TEST_EPOCH_LOG"], "a") as f:
                f.write(f"{trainer.current_epoch}\\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--model", default="Regressor")
    ap.add_argument("--no-record-class", action="store_true")
    args = ap.parse_args()

    pl.seed_everything(0, workers=True)
    model = getattr(models, args.model)(width=args.width)
    callbacks = [ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True, every_n_epochs=1), TestHooks()]
    if not args.no_record_class:
        callbacks.append(RecordClass())
    world = int(os.environ.get("WORLD_SIZE", "1"))   # under torchrun: one process per device
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=world,
                         strategy="ddp" if world > 1 else "auto", deterministic=True,
                         logger=OrchLogger(), callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False)
    last = os.path.join(args.ckpt_dir, "last.ckpt")
    trainer.fit(model, models.loader(), ckpt_path=last if os.path.exists(last) else None)
    trainer.save_checkpoint(args.out)


if __name__ == "__main__":
    main()
'''

STAGES = '''
import lightning.pytorch as pl

from orchestrator import JsonCacher, LightningCheckpointCacher, run_external, stage
from orchestrator.integrations.lightning import OrchLogger

import models


@stage(outputs=["model"], cachers=[LightningCheckpointCacher], ignore=["train.nproc"])
def train(record):
    p = record.params.train
    out = record.get_path("model.ckpt")
    cmd = ["external/train.py", "--out", out, "--ckpt-dir", record.checkpoint_dir(), "--epochs", p.epochs,
           "--width", p.width, "--model", p.model]
    if not p.record_class:
        cmd.append("--no-record-class")
    run_external(cmd, nproc=p.nproc if p.nproc > 1 else None)
    return out


@stage(outputs=["model_inproc"], cachers=[LightningCheckpointCacher])
def train_inproc(record):
    p = record.params.train
    pl.seed_everything(1)
    trainer = pl.Trainer(max_epochs=p.epochs, accelerator="cpu", logger=OrchLogger(prefix="inproc_"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = models.Regressor(width=p.width)
    trainer.fit(model, models.loader())
    return model


@stage(inputs=["model", "model_inproc"], outputs=["report"], cachers=[JsonCacher])
def evaluate(record, model, model_inproc):
    import torch

    x, y = models.dataset()[:]
    with torch.no_grad():
        mse = [float(torch.nn.functional.mse_loss(m(x), y)) for m in (model, model_inproc)]
    return {"classes": [type(model).__name__, type(model_inproc).__name__],
            "widths": [model.hparams.width, model_inproc.hparams.width], "mse": mse[0], "inproc_mse": mse[1]}
'''

EXPERIMENT = '''
from lit_stages import evaluate, train, train_inproc


def run(record):
    train(record)
    train_inproc(record)
    evaluate(record)
'''

EXPERIMENT_TRAIN = '''
from lit_stages import train


def run(record):
    train(record)
'''

PARAMS = '''
train:
  epochs: {epochs}
  width: 8
  nproc: 1
  model: Regressor
  record_class: true
'''


def write(project, epochs: int = 3) -> None:
    """The project's files: models.py, external/train.py, lit_stages.py, two experiments, params/p.yaml."""
    project.write("models.py", MODELS)
    project.write("external/train.py", TRAIN_SCRIPT)
    project.write("lit_stages.py", STAGES)
    project.write("experiment.py", EXPERIMENT)
    project.write("train_only.py", EXPERIMENT_TRAIN)
    project.write("params/p.yaml", PARAMS.format(epochs=epochs))
