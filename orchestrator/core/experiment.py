"""The user's experiment: loading experiment.py as an importable module, and wiring its DAG.

The experiment's directory goes first on sys.path and the file is imported under its stem, so
`from stages.data import make_dataset` works and worker processes can re-import every stage by
module and name. `build_graph` calls its run(record) once per parameter set (and aggregate(records)
once): calling a stage there adds a node, nothing executes.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from ..errors import ExperimentError, OrchError, user_traceback
from ..params import ParamSet
from ..stage import Stage
from .graph import Graph


def load_experiment(path: str | os.PathLike) -> ModuleType:
    path = os.path.realpath(path)  # (os.path, not pathlib: a cached run does not import pathlib)
    if not os.path.isfile(path):
        raise ExperimentError(f"experiment file {path} not found; pass the path of your experiment.py")
    root, filename = os.path.split(path)
    name, suffix = os.path.splitext(filename)
    if suffix != ".py":
        raise ExperimentError(f"experiment file {path} must be a Python file (.py)")
    if root not in sys.path:
        sys.path.insert(0, root)
    if not name.isidentifier():
        raise ExperimentError(f"experiment file {filename}: its name must be a valid module name (e.g. experiment.py)")
    existing = sys.modules.get(name)
    if existing is not None and os.path.realpath(getattr(existing, "__file__", "") or "") != path:
        raise ExperimentError(
            f"experiment file {filename} has the same module name as the installed module {name!r} "
            f"({getattr(existing, '__file__', '?')}); rename the file"
        )
    try:
        module = importlib.import_module(name)
    except SyntaxError as e:
        raise ExperimentError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        raise ExperimentError(f"importing experiment {path} failed:\n{user_traceback(e, header=False).rstrip()}") from e
    if not callable(getattr(module, "run", None)):
        raise ExperimentError(f"experiment {path} defines no run(record) function; add one that calls your stages")
    return module


def build_graph(module: ModuleType, param_sets: list[ParamSet]) -> Graph:
    """Call run(record) once per parameter set (and aggregate(records) once) to wire the DAG."""
    graph = Graph(param_sets)
    records = []
    for pset in param_sets:
        record = graph.new_record(pset)
        _call_user(module.run, record, f"run(record) for parameter set {pset.name!r}", module)
        records.append(record)
    agg = getattr(module, "aggregate", None)
    if callable(agg) and not isinstance(agg, Stage):
        _call_user(agg, records, "aggregate(records)", module)
    return graph


def _call_user(fn, arg, what: str, module: ModuleType) -> None:
    try:
        fn(arg)
    except OrchError:
        raise
    except Exception as e:
        raise ExperimentError(f"{what} in {module.__file__} raised while planning:\n"
                              f"{user_traceback(e, header=False).rstrip()}") from e
