"""The one vocabulary of node states, shared by planning, the run loop, the executors, the manifest,
the report and the CLI. Members are strings (`Status.RAN == "ran"`), so manifests stay plain JSON."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    #: Planned: waits on an upstream node that must run first; decided once its inputs exist
    #: (early cutoff may still make it a hit).
    PENDING = "pending"
    #: Planned: must run; the decision's reason says why.
    RUN = "run"
    #: A valid entry exists: the outputs come from the store (planned, and as the outcome).
    CACHED = "cached"
    #: Outcome: ran in this run and stored its outputs.
    RAN = "ran"
    #: Outcome: the stage raised, its outputs could not be saved, or its worker died.
    FAILED = "failed"
    #: Outcome: not run because a node it depends on failed.
    SKIPPED = "skipped"
    #: Task result only: a stored input turned out damaged (quarantined); the run loop recomputes
    #: its producer and runs the node again. Never an outcome.
    DAMAGED = "damaged"

    def __str__(self) -> str:  # f"{Status.RAN}" is "ran" on every Python version
        return self.value

    __format__ = str.__format__


#: What a finished run can say about itself in its manifest.
RUN_OK, RUN_FAILED, RUN_INTERRUPTED, RUN_RUNNING = "ok", "failed", "interrupted", "running"
#: Never written: what readers show for a manifest still "running" whose process is gone (kill -9,
#: an MPI job aborted by the launcher, a lost node); runs.manifest tells by the run's liveness lock.
RUN_DIED = "died"
#: `--executor slurm --detach`: what was ready is submitted and runs on without the head.
RUN_DETACHED = "detached"
