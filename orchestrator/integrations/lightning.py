"""PyTorch Lightning with orch: its logged metrics in the node's stream, its checkpoints loadable by class.

- `OrchLogger()`: a Lightning logger that appends what Lightning logs (`self.log(...)` in the module,
  PINA's losses, ...) to the running node's metrics stream, so the curves are in the report and the
  final values in `orch compare`. In a stage that calls `trainer.fit` itself it writes where
  `record.log` writes; in a script launched by `run_external` it follows `ORCH_METRICS_FILE`, as
  `orchestrator.metrics.log` does; outside orch it does nothing. Rank 0 only.
- `RecordClass()`: a callback that writes the LightningModule's import path into every full checkpoint
  the Trainer saves (`trainer.save_checkpoint`, `ModelCheckpoint`; Lightning skips callbacks for
  weights-only ones, `ModelCheckpoint(save_weights_only=True)`), so `LightningCheckpointCacher` and
  `orchestrator.load` rebuild the right subclass without the loading code naming it (Lightning's
  `load_from_checkpoint` must be called on the right class; a checkpoint does not say which).
- `save_checkpoint(trainer, path)`: `trainer.save_checkpoint` with `RecordClass` in place.

This module imports Lightning (`lightning.pytorch`, else the older `pytorch_lightning` package), so
it is imported only by code that uses it; `import orchestrator` never imports it.
"""

from __future__ import annotations

import json
import os

from ..errors import MissingDependencyError

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package of Lightning < 2 (and of the curifactory cookbook)
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise MissingDependencyError(
            "orchestrator.integrations.lightning needs PyTorch Lightning: pip install 'orch[lightning]' "
            "(install torch==2.13.0 first so that pip does not pull a CUDA build of torch)"
        ) from None

from ..artifacts.lightning import CLASS_KEY, class_fields, missing_init_args

__all__ = ["OrchLogger", "RecordClass", "save_checkpoint", "CLASS_KEY"]

rank_zero_only = pl.utilities.rank_zero_only


class OrchLogger(pl.loggers.Logger):
    """Lightning's logged metrics into the running orch node's metrics stream.

    `Trainer(logger=OrchLogger())`, or next to other loggers: `logger=[OrchLogger(), TensorBoardLogger(...)]`.
    Each `log_metrics` call becomes one stream line with Lightning's step (the global step). The
    `epoch` value Lightning adds to every call is left out (`skip=()` keeps it): it is the x-axis,
    not a result. `prefix="pinn/"` prefixes every name. Hyperparameters are not logged: orch's
    parameter sets already are the record of them.
    """

    def __init__(self, *, prefix: str = "", skip=("epoch",)):
        super().__init__()
        self._prefix = prefix
        self._skip = frozenset(skip)

    @property
    def name(self) -> str:
        return "orch"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        values = {self._prefix + k: v for k, v in metrics.items() if k not in self._skip}
        if values:
            write_metrics(step, values)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def write_metrics(step, values: dict) -> None:
    """One line in the running node's stream: the stage's record when a stage runs in this process
    (also a Record made by hand, which keeps it in `record.logged`), else the stream run_external
    names in ORCH_METRICS_FILE, else nowhere. (Not `record.log(step, **values)`: a metric may be
    called "step".)"""
    from .. import metrics
    from ..record import current_record

    record = current_record.get()
    if record is not None:
        if record.metrics_path is None:
            record.logged.append(json.loads(metrics.encode(step, values)))
        else:
            metrics.append(record.metrics_path, step, values)
        return
    path = os.environ.get(metrics.ENV_VAR)
    if path:
        metrics.append(path, step, values)


class RecordClass(pl.Callback):
    """Write the LightningModule's class ("pkg.mod:Qual", and the defining file for a class of a
    script run as __main__) into every checkpoint: `Trainer(callbacks=[RecordClass(), ...])`.

    Warns once (rank 0) when the class takes required arguments that `save_hyperparameters()` did
    not record: such a checkpoint keeps its weights, but cannot be rebuilt without naming them."""

    def __init__(self):
        super().__init__()
        self._warned = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint.update(class_fields(type(pl_module)))
        if not self._warned:
            missing = missing_init_args(type(pl_module), checkpoint.get("hyper_parameters"), {})
            if missing:
                self._warned = True
                _warn_missing(type(pl_module), missing)


@rank_zero_only
def _warn_missing(cls, missing) -> None:
    import warnings

    warnings.warn(
        f"{cls.__qualname__} checkpoints lack the init arguments {', '.join(missing)}: call "
        f"self.save_hyperparameters() in {cls.__qualname__}.__init__, or orchestrator.load(...) cannot rebuild it "
        f"without hparams={{...}}", RuntimeWarning, stacklevel=3)


def save_checkpoint(trainer, path, weights_only: bool = False) -> None:
    """`trainer.save_checkpoint(path)` with the module's class recorded (adds `RecordClass` to the
    trainer's callbacks if it has none). Under DDP call it on every rank, as Lightning requires:
    rank 0 writes. `weights_only=True` leaves out optimizer and loop state (a smaller final model);
    Lightning then skips the callbacks' hooks, so rank 0 adds the class to the written file."""
    path = os.fspath(path)
    if not any(isinstance(cb, RecordClass) for cb in trainer.callbacks):
        trainer.callbacks.append(RecordClass())
    trainer.save_checkpoint(path, weights_only=weights_only)
    if weights_only and trainer.is_global_zero:
        from ..artifacts.lightning import add_class_fields

        add_class_fields(path, type(trainer.lightning_module))
