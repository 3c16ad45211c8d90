"""orch: a cached DAG experiment orchestrator. Public API only; importing this is cheap.

How the package is organized: ARCHITECTURE.md at the repository root."""

from .cachers import (
    Cacher,
    CheckpointCacher,
    FileReferenceCacher,
    JsonCacher,
    Lazy,
    LightningCheckpointCacher,
    NumpyCacher,
    PickleCacher,
)
from .errors import OrchError
from .record import Record
from .stage import aggregate, stage

__all__ = ["stage", "aggregate", "Record", "Lazy", "Cacher", "PickleCacher", "JsonCacher", "OrchError", "run_external",
           "CheckpointCacher", "LightningCheckpointCacher", "FileReferenceCacher", "NumpyCacher", "load"]


def load(name: str, run: str = "latest", param_set: str | None = None, cache=None, experiment_dir=None, **options):
    """An artifact of a past run, e.g. `load("model", device="cpu")` in a notebook (see orchestrator.artifacts.load)."""
    from .artifacts.retrieve import load as _load

    return _load(name, run=run, param_set=param_set, cache=cache, experiment_dir=experiment_dir, **options)


def __getattr__(name: str):
    """Lazy public names: `from orchestrator import run_external` loads its module only when asked."""
    if name == "run_external":
        from .executors.external import run_external

        return run_external
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
