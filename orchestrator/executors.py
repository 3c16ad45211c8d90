"""Executors decide *where* a node runs. The runner submits Tasks and collects TaskResults; it never
waits on one node while another is ready, whatever the executor."""

from __future__ import annotations

import abc

from .store import Store
from .task import Task, TaskResult, execute


class Executor(abc.ABC):
    #: True when the task's in-memory input values can be handed over as they are (same process).
    shares_memory = False

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

    def close(self) -> None:
        """Release workers."""


class InProcessExecutor(Executor):
    """Runs each task in the calling process, one at a time (the default)."""

    shares_memory = True

    def __init__(self, store: Store):
        self.store = store
        self._done: list[TaskResult] = []

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, task: Task, stage) -> None:
        self._done.append(execute(task, self.store, stage))

    def wait(self) -> list[TaskResult]:
        done, self._done = self._done, []
        return done
