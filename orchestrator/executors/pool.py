"""`--parallel N`: N local worker processes (concurrent.futures), started on the first submit."""

from __future__ import annotations

import os
import traceback
from collections import deque

from ..core.status import Status
from .base import Executor
from .task import Task, TaskResult
from .worker import WorkerConfig, decode_result, encode_task, init_pool_worker, run_encoded


def _threads_in_this_process() -> int | None:
    """Every thread, native ones included (OpenMP pools, CUDA, library helpers); None if unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _mp_context():
    """How worker processes start. fork is the fastest (~10 ms for 4 workers, vs ~0.15 s) and gives
    workers the already imported experiment, but forking a process with other threads can leave a
    lock held by a thread that does not exist in the child (a deadlock), and breaks CUDA. So fork
    only when this process has exactly one thread, native threads included; else forkserver
    (workers forked from a clean single-threaded server that has imported orch); else spawn.
    ORCH_START_METHOD=fork|forkserver|spawn overrides (e.g. an experiment module that opens a
    connection at import, which forked workers would share)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    chosen = os.environ.get("ORCH_START_METHOD", "")
    if chosen:
        if chosen not in methods:
            from ..errors import OrchError

            raise OrchError(f"ORCH_START_METHOD={chosen!r}: this platform offers {', '.join(methods)}")
        methods = [chosen]
    if "fork" in methods and (chosen == "fork" or _threads_in_this_process() == 1):
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["orchestrator.executors.pool", "orchestrator.cli"])
        return ctx
    return multiprocessing.get_context("spawn")


class PoolExecutor(Executor):
    """`--parallel N`: N local worker processes. Processes start on the first submit, so a fully
    cached run pays nothing for them.

    When a worker dies abruptly (os._exit, a segfault, the OOM killer), concurrent.futures fails
    every task of the pool, and which one killed it is unknown. Those tasks are retried one at a
    time in a fresh pool: the culprit dies alone and fails, the bystanders complete."""

    def __init__(self, workers: int, config: WorkerConfig):
        if workers < 1:
            raise ValueError("--parallel needs at least 1 worker")
        self.workers = workers
        self.config = config
        self._pool = None
        self._futures: dict = {}  # future -> (node_id, label, payload)
        self._done: list[TaskResult] = []
        self._suspects: deque = deque()  # (node_id, label, payload) in flight when the pool broke
        self._held: deque = deque()  # submissions waiting while suspects are retried
        self._alone = False  # a suspect is running by itself

    @property
    def capacity(self) -> int:
        return self.workers

    def _get_pool(self):
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_mp_context(),
                                             initializer=init_pool_worker, initargs=(self.config, os.getpid()))
        return self._pool

    def submit(self, task: Task, stage) -> None:
        payload = encode_task(task)
        if isinstance(payload, TaskResult):
            self._done.append(payload)
        elif self._suspects or self._alone:
            self._held.append((task.node_id, task.label, payload))
        else:
            self._start(task.node_id, task.label, payload)

    def _start(self, node_id: int, label: str, payload: bytes) -> None:
        future = self._get_pool().submit(run_encoded, node_id, payload)
        self._futures[future] = (node_id, label, payload)

    def wait(self) -> list[TaskResult]:
        from concurrent.futures import FIRST_COMPLETED, wait

        results, self._done = self._done, []
        while True:
            if not self._futures:  # the next suspect alone, or back to normal
                self._alone = bool(self._suspects)
                if self._alone:
                    self._start(*self._suspects.popleft())
                while self._held and not self._alone:
                    self._start(*self._held.popleft())
                if not self._futures:
                    if results:
                        return results
                    raise RuntimeError("PoolExecutor.wait() called with nothing submitted")
            finished, _ = wait(list(self._futures), timeout=0 if results else None, return_when=FIRST_COMPLETED)
            results.extend(self._collect(finished))
            if results:
                return results

    def _collect(self, finished) -> list[TaskResult]:
        from concurrent.futures import wait
        from concurrent.futures.process import BrokenProcessPool

        if not any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
            return [self._result(f, *self._futures.pop(f)[:2]) for f in finished]
        # The pool is dead: every other future fails the same way, promptly.
        wait(list(self._futures))
        results, broken = [], []
        for future, info in self._futures.items():
            if isinstance(future.exception(), BrokenProcessPool):
                broken.append(info)
            else:
                results.append(self._result(future, *info[:2]))
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        if len(broken) == 1:  # alone (or the only one running): it is the culprit
            node_id, label, _ = broken[0]
            results.append(TaskResult(node_id, Status.FAILED, error_type="WorkerDied", error=(
                f"stage {label}: its worker process died abruptly (os._exit, killed, out of memory, or a crash in "
                "native code; a native crash prints its traceback above)")))
        else:
            self._suspects.extend(broken)
        return results

    @staticmethod
    def _result(future, node_id: int, label: str) -> TaskResult:
        try:
            return decode_result(future.result())
        except Exception as e:  # an error of orch's worker side itself: report it as the node's failure
            return TaskResult(node_id, Status.FAILED, error=f"internal error in the worker: {type(e).__name__}: {e}",
                              error_type=type(e).__name__, traceback="".join(traceback.format_exception(e)))

    def close(self, exit_code: int = 0) -> None:
        """Wait for the workers to end; an interrupted run (Ctrl-C, SIGTERM) first stops them, rather
        than wait for nodes nobody will use (a terminal's Ctrl-C reached them already, a SIGTERM sent
        to `orch` alone did not). A stopped worker's outputs never reach the store half-written."""
        from ..interrupts import INTERRUPTED_EXITS

        if self._pool is not None:
            if exit_code in INTERRUPTED_EXITS:
                for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
