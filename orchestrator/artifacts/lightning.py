"""Lightning checkpoints as artifacts: the heavy half of `cachers.LightningCheckpointCacher`.

A Lightning `.ckpt` holds the weights, the hyperparameters `save_hyperparameters()` recorded and the
training state (optimizers, schedulers, loops, callbacks), but not the class: `load_from_checkpoint`
must be called on the right `LightningModule` subclass, which is why the curifactory cookbook's model
cacher ends in an if/elif chain over classes. `integrations.lightning.RecordClass` writes the class's
import path into every checkpoint (`orch_class`, plus `orch_class_file` for a class defined in a
script run as __main__); this module reads it back and rebuilds the module on any device.

A checkpoint can be rebuilt when its class is importable where it is loaded (a project module, or a
script with an `if __name__ == "__main__":` guard) and every required `__init__` argument is among
the saved hyperparameters or given at load (`hparams={...}`). When not, loading raises
CheckpointError saying which and what to do; storing never fails over it (hours of training are not
thrown away because of a missing `save_hyperparameters()`), it warns.

Nothing here imports torch or Lightning at module level.
"""

from __future__ import annotations

import inspect
import os
import sys

from ..errors import CheckpointError

CLASS_KEY = "orch_class"
CLASS_FILE_KEY = "orch_class_file"
HPARAMS_KEY = "hyper_parameters"
#: What a checkpoint holds besides the module: dropped unless asked for (`training_state=True`).
TRAINING_STATE = ("epoch", "global_step", "optimizer_states", "lr_schedulers", "loops", "callbacks")
_HOW_TO_RECORD = ("add orchestrator.integrations.lightning.RecordClass() to the Trainer's callbacks (or save with "
                  "its save_checkpoint(trainer, path))")


def class_fields(cls) -> dict:
    """The checkpoint entries that name `cls`."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return {CLASS_KEY: f"{cls.__module__}:{cls.__qualname__}", CLASS_FILE_KEY: os.path.abspath(file) if file else None}


def missing_init_args(cls, saved, given) -> list[str]:
    """The required `__init__` arguments of `cls` that neither the saved hyperparameters nor the
    ones given at load provide: Lightning would call `cls(**hparams)` without them."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    have = set(saved or {}) | set(given or {})
    return [p.name for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in have]


# ------------------------------------------------------------------------------------------- saving


def describe(path: str) -> dict:
    """The metadata stored with a checkpoint file (class, hyperparameter names, epoch, what training
    state it holds). Raises ValueError when the file is not a Lightning checkpoint at all."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError("it is not a torch checkpoint file (write it with trainer.save_checkpoint)")
    ckpt = _read(path, mmap=True)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)):
        raise ValueError("it holds no Lightning 'state_dict' (a plain torch checkpoint: use CheckpointCacher)")
    hparams = ckpt.get(HPARAMS_KEY)
    return {
        "kind": "lightning",
        "class": ckpt.get(CLASS_KEY),
        "class_file": ckpt.get(CLASS_FILE_KEY),
        "hparams": sorted(str(k) for k in hparams) if isinstance(hparams, dict) else None,
        "epoch": ckpt.get("epoch") if type(ckpt.get("epoch")) is int else None,
        "global_step": ckpt.get("global_step") if type(ckpt.get("global_step")) is int else None,
        "training_state": [k for k in TRAINING_STATE[2:] if ckpt.get(k)],
    }


def save_module(module, path: str) -> dict:
    """A LightningModule returned by an in-process stage, as a weights-only Lightning checkpoint
    (what `trainer.save_checkpoint(path, weights_only=True)` writes, without needing the trainer:
    under DDP that call is collective, and only rank 0 stores outputs)."""
    import torch

    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    ckpt = {"state_dict": module.state_dict(), "pytorch-lightning_version": pl.__version__,
            **class_fields(type(module))}
    hparams = getattr(module, "hparams", None)
    if hparams:
        ckpt[HPARAMS_KEY] = dict(hparams)
    torch.save(ckpt, path)
    return describe(path)


def add_class_fields(path: str, cls) -> None:
    """Record `cls` in a checkpoint already written (a weights-only one: Lightning calls no callback
    for those), rewritten atomically."""
    from .checkpoint import _atomic_torch_save

    ckpt = _read(path)
    ckpt.update(class_fields(cls))
    _atomic_torch_save(ckpt, path)


def storing_warning(meta: dict, what: str) -> str | None:
    """Why a checkpoint just stored could not be loaded without help, or None."""
    if not meta.get("class"):
        return (f"{what}: the checkpoint does not record its LightningModule class, so loading it needs cls=...; "
                f"{_HOW_TO_RECORD}")
    return None


# ------------------------------------------------------------------------------------------ loading


def load(path: str, metadata: dict | None, *, device=None, model=True, cls=None, hparams=None, strict=True,
         training_state=False, skip=()):
    """The LightningModule of the checkpoint at `path` (see LightningCheckpointCacher.load)."""
    from .checkpoint import _map_location

    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    map_location = _map_location(device)  # an explicit device must exist here
    skip = set(skip)
    if model is False:
        ckpt = _read(path, map_location=map_location)
        return {k: v for k, v in ckpt.items() if k not in skip}
    if model is not True:
        raise CheckpointError(f"LightningCheckpointCacher.load(model=...) takes True or False, got {model!r}")
    meta = metadata if metadata and metadata.get("kind") == "lightning" else describe_or_raise(path)
    module_cls = cls if cls is not None else _recorded_class(meta, path)
    _check_module_class(module_cls, path)
    missing = missing_init_args(module_cls, meta.get("hparams"), hparams)
    if missing:
        name = module_cls.__qualname__
        raise CheckpointError(
            f"checkpoint {path} cannot rebuild {name}: its init arguments {', '.join(missing)} were not saved "
            f"(saved hyperparameters: {', '.join(meta.get('hparams') or []) or 'none'}); call "
            f"self.save_hyperparameters() in {name}.__init__ for the next checkpoints, or give them at load: "
            f"hparams={{{', '.join(repr(m) + ': ...' for m in missing)}}}")
    built = _load_from_checkpoint(module_cls, path, map_location, strict, hparams or {})
    if not training_state:
        return built
    ckpt = _read(path, mmap=True)
    return {"model": built, **{k: ckpt[k] for k in TRAINING_STATE if k in ckpt and k not in skip}}


def describe_or_raise(path: str) -> dict:
    try:
        return describe(path)
    except ValueError as e:
        raise CheckpointError(f"{path} is not a Lightning checkpoint: {e}") from None


def _recorded_class(meta: dict, path: str):
    from .checkpoint import import_class

    qualname = meta.get("class")
    if not qualname:
        raise CheckpointError(
            f"checkpoint {path} does not record which LightningModule class it holds: {_HOW_TO_RECORD} in the "
            f"script that wrote it, or name the class at load: load(..., cls=MyModule)")
    try:
        return import_class(qualname, meta.get("class_file"), path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (or load(..., cls=...) with the class, model=False for the raw checkpoint dict)") from e.__cause__


def _check_module_class(cls, path: str) -> None:
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and hasattr(cls, "load_from_checkpoint")):
        raise CheckpointError(f"checkpoint {path}: {cls!r} is not a LightningModule class; refusing to construct it")


def _load_from_checkpoint(cls, path: str, map_location, strict: bool, hparams: dict):
    name = cls.__qualname__
    options = {"map_location": map_location, "strict": strict}
    if "weights_only" in inspect.signature(cls.load_from_checkpoint).parameters:
        # Objects in the store were written by the project's own stages: the same trust as
        # PickleCacher (hyperparameters may hold any picklable object).
        options["weights_only"] = False
    try:
        return cls.load_from_checkpoint(path, **options, **hparams)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path}: rebuilding {name} from its saved hyperparameters failed: {e}; has "
                              f"{name}.__init__ changed since the checkpoint was written? (hparams={{...}} overrides)") from e
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        raise CheckpointError(f"checkpoint {path}: the saved weights do not fit {name}: {e}") from e


def _read(path: str, *, mmap: bool = False, map_location="cpu"):
    """torch.load of a trusted checkpoint; with mmap, tensors are read only when touched (a look at
    the metadata of a multi-GB checkpoint costs nothing)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint: {type(e).__name__}: {e}") from e
