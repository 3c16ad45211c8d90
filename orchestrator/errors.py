"""Every error a user can cause derives from OrchError: the CLI prints its message (no traceback
unless --debug) and exits non-zero. Messages name the file, stage, artifact or parameter and say
what to do."""


import os

_ORCH_DIR = os.path.dirname(os.path.abspath(__file__))


def user_traceback(exc: BaseException, header: bool = True) -> str:
    """The traceback of the user's own code: without orch's frames (users debug their code, not ours)
    and without the import machinery's (`<frozen importlib._bootstrap>`, `importlib/__init__.py`),
    which sit between an import statement and the user's module that failed to import. Chained
    exceptions (`raise ... from e`, errors while handling another) are filtered the same way."""
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    hidden = _hidden_frame_test()
    seen: set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = traceback.StackSummary.from_list([f for f in t.stack if not hidden(f.filename)])
        todo += [t.__cause__, t.__context__, *(getattr(t, "exceptions", None) or ())]  # exception groups: 3.11+
    lines = list(te.format())
    if not header and lines and lines[0].startswith("Traceback"):
        lines = lines[1:]
    return "".join(lines)


def _hidden_frame_test():
    import importlib

    importlib_dir = os.path.dirname(os.path.abspath(importlib.__file__))
    machinery = {os.path.join(importlib_dir, name)
                 for name in ("__init__.py", "_bootstrap.py", "_bootstrap_external.py")}

    def hidden(filename: str) -> bool:
        if filename.startswith("<frozen importlib"):
            return True
        path = os.path.abspath(filename)
        return path.startswith(_ORCH_DIR + os.sep) or path in machinery

    return hidden


class OrchError(Exception):
    """Base of all user-facing errors."""

    exit_code = 1


class ParamsError(OrchError):
    """A parameter file or a --set override is wrong (bad YAML, unknown key, bad sweep)."""


class UnknownParameterError(ParamsError, AttributeError):
    """A stage read a parameter that its parameter set does not have.

    Also an AttributeError so that ``getattr(record.params, "x", default)`` keeps working."""


class ExperimentError(OrchError):
    """The experiment file cannot be loaded or its run()/aggregate() is wrong."""


class StageDefinitionError(OrchError):
    """A @stage/@aggregate declaration is invalid."""


class ResourcesError(OrchError):
    """A stage asks a cluster for what it cannot give (more nodes than its partition has)."""


class PlanningError(OrchError):
    """The DAG cannot be built: missing input producer, cycle, stage called outside planning."""


class StageOutputError(OrchError):
    """A stage returned the wrong number of outputs or an output its cacher cannot save."""


class ExternalCommandError(OrchError):
    """An external command (run_external) failed, timed out or could not start.

    `command` (the argv list), `returncode` (None if it never ran), `tail` (its last output lines),
    `log_path` and `timed_out` let a stage react to the failure. The message's first line says what
    failed and how, then the command line and the log; the tail only if it was not streamed live."""

    def __init__(self, message: str, *, command=None, returncode=None, tail=None, log_path=None, timed_out=False):
        super().__init__(message)
        self.command = list(command) if command is not None else None
        self.returncode = returncode
        self.tail = list(tail or [])
        self.log_path = log_path
        self.timed_out = timed_out

    def __reduce__(self):  # keep the attributes across process boundaries (pool workers, MPI ranks)
        return (_rebuild_external_error, (self.args[0] if self.args else "", self.__dict__))


def _rebuild_external_error(message, state):
    err = ExternalCommandError(message)
    err.__dict__.update(state)
    return err


class StoreError(OrchError):
    """The cache directory is unusable (permissions, not a cache)."""


class CacheWriteError(StoreError):
    """The cache's filesystem refused a write: full, over quota, read-only or not permitted
    (store.failures words the message). `errno` says which."""

    errno: int | None = None


class ReadOnlyCacheError(StoreError):
    """A run must store results in a cache that is read-only for this user."""


class LockingUnsupportedError(StoreError):
    """The cache's filesystem supports no file locks (flock(2), fcntl(2)), which node locks need."""


class DamagedObjectError(StoreError):
    """A stored object is missing or does not match its hash: treated as a cache miss."""


class RunNotFoundError(OrchError):
    """A run, parameter set or artifact asked for by name does not exist."""


class CheckpointError(OrchError):
    """A checkpoint cannot be written or read back (missing file, model class not importable,
    init arguments unknown, weights that do not fit the rebuilt model, unavailable device)."""


class MissingDependencyError(OrchError, ImportError):
    """An optional part of orch is used without the package it needs (e.g. Lightning: orch[lightning])."""


class ArtifactLoadError(OrchError):
    """A stored artifact exists but its cacher cannot load it (e.g. its class moved or its format changed)."""


class ParamSetNotFoundError(RunNotFoundError):
    """A run has no parameter set of that name."""


class ArtifactNotFoundError(RunNotFoundError):
    """A run has no artifact of that name (or it was not stored)."""


class ReportError(OrchError):
    """A run report or DAG picture cannot be written (the -o path, or Graphviz's `dot` failed)."""


class GraphvizNotFoundError(ReportError):
    """--format png needs Graphviz's `dot` program, and it is not installed."""


class ProgressError(OrchError):
    """A progress setting (ORCH_PROGRESS_AFTER, ORCH_PROGRESS_EVERY) is not a valid number of seconds."""
