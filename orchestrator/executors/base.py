"""Executors decide *where* a node runs. The runner submits Tasks and collects TaskResults; it never
waits on one node while another is ready, whatever the executor.

- InProcessExecutor: the calling process, one node at a time (the default).
- PoolExecutor: `--parallel N` local worker processes (concurrent.futures).
- MPIExecutor (executors_mpi): ranks of an `mpiexec` job.
- torchrun ranks (executors_torchrun): rank 0 runs everything, `distributed=True` stages on every rank.

Workers of the pool and MPI ranks share the same worker side (`init_worker`, `run_encoded`): they
put the experiment's directory on sys.path, import the experiment (stages re-import by module and
name), read inputs from the store and write outputs to it. Only in-memory (uncached) values travel
pickled, in both directions.
"""

from __future__ import annotations

import abc
import os
import pickle
import sys
import traceback
from collections import deque
from dataclasses import dataclass

from ..store import Store
from .task import Task, TaskResult, execute, import_stage


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


# -- the worker side, shared by pool processes and MPI ranks ----------------------------------------

@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs before its first task."""

    store_root: str
    experiment: str  # path of the experiment file


class _Worker:
    """This process's worker state (one per process, set by init_worker)."""

    store: Store | None = None
    setup_error: str = ""
    where: str = ""  # "MPI rank 3 on node12": appended to failures so users know where to look


def init_worker(config: WorkerConfig, where: str = "") -> None:
    """Prepare this process to run tasks. A failure is kept and reported with every task (as that
    node's failure, naming the process) rather than killing the worker: the coordinator must hear
    about it, e.g. an experiment directory that is not on a cluster node's shared filesystem."""
    import faulthandler

    from ..errors import OrchError
    from ..core.experiment import load_experiment
    from ..store import DiskStore

    faulthandler.enable()  # a crash in native code prints the Python stack of the node that caused it
    _Worker.where = where
    experiment_dir = os.path.dirname(os.path.abspath(config.experiment))
    if experiment_dir not in sys.path:
        sys.path.insert(0, experiment_dir)
    try:
        _Worker.store = DiskStore(config.store_root)
        load_experiment(config.experiment)
    except OrchError as e:
        _Worker.setup_error = str(e)


def run_encoded(node_id: int, payload: bytes) -> bytes:
    """Worker entry: unpickle a Task, execute it, return its pickled TaskResult. Never raises for
    anything a node can cause; the result says what failed."""
    result = _run_payload(node_id, payload)
    if result.status == "failed" and _Worker.where:
        result.error = f"{result.error} [on {_Worker.where}]"
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
        return pickle.dumps(_unpicklable_output(result, e), protocol=pickle.HIGHEST_PROTOCOL)


def _run_payload(node_id: int, payload: bytes) -> TaskResult:
    if _Worker.store is None or _Worker.setup_error:
        where = f" on {_Worker.where}" if _Worker.where else ""
        return TaskResult(node_id, "failed", error=f"worker setup failed{where}: {_Worker.setup_error or 'not initialized'}",
                          error_type="WorkerSetupError")
    try:
        task = pickle.loads(payload)
    except Exception as e:  # an input value whose class cannot be imported here, ...
        return TaskResult(node_id, "failed", error=f"the task cannot be unpickled in the worker: {type(e).__name__}: {e}",
                          error_type="WorkerSetupError", traceback=traceback.format_exc())
    try:
        stage = import_stage(task.stage_ref)
    except Exception as e:
        return TaskResult(node_id, "failed", error=f"cannot import stage {task.stage_ref[0]}:{task.stage_ref[1]} "
                          f"in the worker: {type(e).__name__}: {e}", error_type="WorkerSetupError",
                          traceback=traceback.format_exc())
    return execute(task, _Worker.store, stage)


def _unpicklable_output(result: TaskResult, error: BaseException) -> TaskResult:
    bad = []
    for name, value in result.values.items():
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            bad.append(f"{name!r} ({type(value).__name__})")
    what = f"output {', '.join(bad)}" if bad else "its result"
    return TaskResult(result.node_id, "failed", duration=result.duration, error_type="StageOutputError",
                      error=f"{what} is kept in memory only (no cacher) and cannot be pickled to send it back from "
                            f"the worker process ({type(error).__name__}: {error}); give the output a cacher, or "
                            f"run without --parallel/MPI")


def encode_task(task: Task) -> bytes | TaskResult:
    """Pickle a task for another process, or return its failure when an in-memory input cannot be."""
    task.return_cached_values = False
    try:
        return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
        bad = []
        for inp in task.inputs:
            if inp.in_memory:
                try:
                    pickle.dumps(inp.value, protocol=pickle.HIGHEST_PROTOCOL)
                except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
                    bad.append(f"{inp.name!r} ({type(inp.value).__name__})")
        what = f"input {', '.join(bad)}" if bad else "the task"
        return TaskResult(task.node_id, "failed", error_type="StageOutputError",
                          error=f"stage {task.label}: {what} is an in-memory output (no cacher) that cannot be pickled "
                                f"to send it to a worker process ({type(e).__name__}: {e}); give its producer's "
                                f"output a cacher, or run without --parallel/MPI")


def decode_result(data: bytes) -> TaskResult:
    return pickle.loads(data)


# -- --parallel N ----------------------------------------------------------------------------------

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
        ctx.set_forkserver_preload(["orchestrator.executors.base", "orchestrator.cli"])
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
                                             initializer=init_worker, initargs=(self.config,))
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
            results.append(TaskResult(node_id, "failed", error_type="WorkerDied", error=(
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
            return TaskResult(node_id, "failed", error=f"internal error in the worker: {type(e).__name__}: {e}",
                              error_type=type(e).__name__, traceback="".join(traceback.format_exception(e)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
