"""Every error a user can cause derives from OrchError: the CLI prints its message (no traceback
unless --debug) and exits non-zero. Messages name the file, stage, artifact or parameter and say
what to do."""


import os

_ORCH_DIR = os.path.dirname(os.path.abspath(__file__))


def user_traceback(exc: BaseException, header: bool = True) -> str:
    """The traceback of the user's own code, without orch's frames (users debug their code, not ours)."""
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not os.path.abspath(f.filename).startswith(_ORCH_DIR + os.sep)]
    )
    lines = list(te.format())
    if not header and lines and lines[0].startswith("Traceback"):
        lines = lines[1:]
    return "".join(lines)


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


class PlanningError(OrchError):
    """The DAG cannot be built: missing input producer, cycle, stage called outside planning."""


class StageOutputError(OrchError):
    """A stage returned the wrong number of outputs or an output its cacher cannot save."""


class StageFailedError(OrchError):
    """A stage raised; carries the stage, parameter set and the original exception."""


class ExternalCommandError(OrchError):
    """An external command (run_external) failed or timed out."""


class StoreError(OrchError):
    """The cache directory is unusable (permissions, not a cache)."""


class DamagedObjectError(StoreError):
    """A stored object is missing or does not match its hash: treated as a cache miss."""


class RunNotFoundError(OrchError):
    """A run, parameter set or artifact asked for by name does not exist."""
