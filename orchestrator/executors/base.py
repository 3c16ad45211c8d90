"""The executor interface: *where* a node runs. The run loop submits Tasks and collects
TaskResults; it never waits on one node while another is ready, whatever the executor.

Implementations (chosen by executors.open_executor):
- InProcessExecutor (here): the calling process, one node at a time (the default);
- PoolExecutor (pool.py): `--parallel N` local worker processes;
- MPIExecutor (mpi.py): the ranks of an `mpiexec`/`srun` job;
- TorchrunLeader (torchrun.py): rank 0 of a torchrun launch, distributed stages on every rank.
A new executor subclasses Executor and gets a branch in open_executor (see ARCHITECTURE.md).
"""

from __future__ import annotations

import abc

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from ..store import Store
    from .task import Task, TaskResult


class Detached(Exception):
    """Raised by an executor's wait() to end the run loop while what it submitted runs on without this
    process (`--executor slurm --detach`); the session records the run as detached."""

    def __init__(self, job_ids: list[str]):
        super().__init__(f"{len(job_ids)} job(s) in flight")
        self.job_ids = job_ids


class Executor(abc.ABC):
    #: The run's directory (runs/<id>), set by the session before start(); None for a dry run.
    run_dir = None

    @abc.abstractmethod
    def submit(self, task: Task, stage) -> None:
        """Start a task (may run it right away)."""

    @abc.abstractmethod
    def wait(self) -> list[TaskResult]:
        """Block until at least one submitted task finished; return every finished one."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many tasks may be in flight at once."""

    def prepare(self, graph) -> None:
        """The run's graph is planned (called once, before start, also for a dry run): an executor
        that needs per-node settings (executors.slurm: each node's resources) derives and checks
        them here, so that a mistake fails before anything runs."""

    def start(self, store: Store) -> None:
        """The run's store is open (called before the first submit). Executors that run nodes in
        this process keep it; the others reach the store through their workers' own."""

    def close(self, exit_code: int = 0) -> None:
        """The run is over (`exit_code` is the command's): release workers and ranks. Idempotent."""


class InProcessExecutor(Executor):
    """Runs each task in the calling process, one at a time (the default)."""

    def __init__(self, store: Store | None = None):
        self.store = store
        self._done: list[TaskResult] = []

    @property
    def capacity(self) -> int:
        return 1

    def start(self, store: Store) -> None:
        self.store = store

    def submit(self, task: Task, stage) -> None:
        from orchestrator.executors.task import execute  # only once a node runs (absolute: see Runner._task)

        self._done.append(execute(task, self.store, stage))

    def wait(self) -> list[TaskResult]:
        done, self._done = self._done, []
        return done
