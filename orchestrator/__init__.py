"""orch: a cached DAG experiment orchestrator. Public API only; importing this is cheap.

The public names are loaded on first use (PEP 562 `__getattr__`): the `orch` entry point
(orchestrator.launcher) lives in this package, and `orch --help` must not pay for importing the
cachers, dataclasses and typing that the API needs.

How the package is organized: ARCHITECTURE.md at the repository root."""

import sys

#: public name -> the submodule that defines it
_LAZY = {
    "stage": "stage", "aggregate": "stage", "Record": "record", "OrchError": "errors",
    "Cacher": "cachers", "CheckpointCacher": "cachers", "FileReferenceCacher": "cachers", "JsonCacher": "cachers",
    "Lazy": "cachers", "LightningCheckpointCacher": "cachers", "NumpyCacher": "cachers", "PickleCacher": "cachers",
    "run_external": "executors.external",
}
#: submodules the package used to import eagerly: `orchestrator.cachers` works after `import orchestrator`
_SUBMODULES = ("cachers", "errors", "record")

__all__ = ["stage", "aggregate", "Record", "Lazy", "Cacher", "PickleCacher", "JsonCacher", "OrchError", "run_external",
           "CheckpointCacher", "LightningCheckpointCacher", "FileReferenceCacher", "NumpyCacher", "load"]


def load(name: str, run: str = "latest", param_set: str | None = None, cache=None, experiment_dir=None, **options):
    """An artifact of a past run, e.g. `load("model", device="cpu")` in a notebook (see orchestrator.artifacts.load)."""
    from .artifacts.retrieve import load as _load

    return _load(name, run=run, param_set=param_set, cache=cache, experiment_dir=experiment_dir, **options)


def __getattr__(name: str):
    """Lazy public names: `from orchestrator import stage` imports orchestrator.stage when first asked."""
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(type(sys)):
    """The function `stage` shares its name with the submodule `orchestrator.stage`: when that
    submodule is first imported (by anything), the import system binds it as an attribute of the
    package; bind the function instead, as the eager `from .stage import stage` used to."""

    def __setattr__(self, name, value):
        if name == "stage" and isinstance(value, type(sys)) and hasattr(value, "stage"):
            value = value.stage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
