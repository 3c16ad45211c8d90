"""Training: launch external/train.py under torchrun and store what it wrote as artifacts.

The training script runs outside the orchestrator's process (torchrun starts one process per
device, each running the script from the top; the orchestrator itself must not be re-run by each
of them). This stage only builds the command line from parameters and input paths, runs it with
`run_external` (which traces the script's content, streams its output to the run's log and raises
with the log's tail if it fails) and returns the files it wrote: the model checkpoint is stored as
the script wrote it, the metrics are loaded as JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from orchestrator import Lazy, run_external, stage
from orchestrator.cachers import CheckpointCacher, JsonCacher

SCRIPT = "external/train.py"
MODEL_CODE = "external/models.py"  # imported by the script: editing it must re-train too


# The process count, time limit and checkpoint location do not change the trained model (the
# script keeps the global batch and the data order fixed whatever the number of processes), so
# changing them never invalidates a cached model.
@stage(inputs=[Lazy("train_data")], outputs=[Lazy("model"), "train_metrics"], cachers=[CheckpointCacher, JsonCacher],
       ignore=["train.nproc", "train.timeout", "train.max_restarts", "train.checkpoint_root"])
def train(record, train_data):
    p = record.params.train
    model_path = record.get_path("model.pt")
    metrics_path = record.get_path("metrics.json")
    args = ["--epochs", p.epochs, "--batch-size", p.batch_size, "--lr", p.lr, "--weight-decay", p.weight_decay,
            "--width", p.width, "--modes", p.modes, "--layers", p.layers, "--seed", p.seed,
            "--device", p.device, "--amp" if p.amp else "--no-amp"]
    code = [record.tracked_hash(record.track(path)) for path in (SCRIPT, MODEL_CODE)]
    checkpoints = checkpoint_dir(record, p.get("checkpoint_root"), [train_data.path, *code, *map(str, args)])
    run_external([SCRIPT, "--train-data", train_data.path, "--model-out", model_path, "--metrics-out", metrics_path,
                  "--checkpoint-dir", checkpoints, *args],
                 nproc=p.nproc, timeout=p.get("timeout"), max_restarts=p.get("max_restarts") or 0)
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    return model_path, metrics  # the checkpoint file is moved into the store as it is


def checkpoint_dir(record, root: str | None, identity: list[str]) -> str:
    """Where the script keeps its per-epoch checkpoints.

    By default the node's checkpoint directory (record.checkpoint_dir): it survives a crash or a
    kill, so a torchrun restart (train.max_restarts) *and* the next `orch run` resume from the last
    epoch, and it is removed once the model is stored. With train.checkpoint_root set, a directory
    of your choice, named after everything that determines the result (data, code,
    hyperparameters), so two parameter sets never share one."""
    if not root:
        return record.checkpoint_dir()
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    path = Path(root)
    if not path.is_absolute():
        path = Path(record.project_root or ".") / path
    path = path / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', record.name)}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
