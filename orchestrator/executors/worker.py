"""The worker side, shared by pool processes, MPI ranks and torchrun followers: set a process up to
run tasks (the experiment importable, the store open), run pickled tasks, send pickled results.

Workers put the experiment's directory on sys.path, import the experiment (stages re-import by
module and name), read inputs from the store and write outputs to it. Only in-memory (uncached)
values travel pickled, in both directions.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from pathlib import Path

from ..artifacts.canonical import PICKLING_ERRORS
from ..core.status import Status
from ..store import Store
from .launch import WorkerConfig
from .task import Task, TaskResult, execute, import_stage


class Backoff:
    """Sleep a little longer each time nothing happened: fast reaction when busy, ~0 CPU when idle
    (waiting ranks and workers poll; a blocking MPI call would spin a core at 100%)."""

    def __init__(self, first: float = 0.0002, most: float = 0.01, factor: float = 2.0):
        self.first, self.most, self.factor, self.delay = first, most, factor, first

    def reset(self) -> None:
        self.delay = self.first

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.most, self.delay * self.factor)


class _Worker:
    """This process's worker state, set once by init_worker (a worker process serves one run)."""

    store: Store | None = None
    setup_error: str = ""
    where: str = ""  # "MPI rank 3 on node12": appended to failures so users know where to look


def init_worker(config: WorkerConfig, where: str = "") -> None:
    """Prepare this process to run tasks. A failure is kept and reported with every task (as that
    node's failure, naming the process) rather than killing the worker: the coordinator must hear
    about it, e.g. an experiment directory that is not on a cluster node's shared filesystem."""
    import faulthandler

    from ..core.experiment import load_experiment
    from ..errors import OrchError
    from ..store import DiskStore

    faulthandler.enable()  # a crash in native code prints the Python stack of the node that caused it
    _Worker.where = where
    experiment_dir = os.path.dirname(os.path.abspath(config.experiment))
    if experiment_dir not in sys.path:
        sys.path.insert(0, experiment_dir)
    try:
        # the coordinator decided whether this run may write the cache; a refused write is the node's CacheWriteError
        _Worker.store = DiskStore(config.store_root, write=False)
        from ..session import project_code

        project_code(Path(config.experiment))  # imports run the hashed source here too (core.pycache)
        load_experiment(config.experiment)
    except OrchError as e:
        _Worker.setup_error = str(e)


def init_pool_worker(config: WorkerConfig, coordinator: int) -> None:
    """A `--parallel` worker: dies with the run that started it, then prepares like any worker (a
    forked one already has SIGTERM's default action back: interrupts.py resets it in every fork)."""
    die_with_parent(coordinator)
    init_worker(config)


def die_with_parent(coordinator: int) -> None:
    """End this worker when the coordinator (`orch run`) dies.

    Why: when `orch run` is killed (kill -9, the OOM killer), its pool workers would otherwise
    finish their nodes for nobody and block the next run on the node locks they hold. Killing a
    worker is safe at any moment: its outputs reach the store only by rename, its lock dies with it.
    A forked worker asks the kernel (Linux PR_SET_PDEATHSIG: SIGKILL when the parent dies). A
    forkserver's worker cannot: its parent is the fork server, which the workers themselves keep
    alive (they hold its liveness pipe), so a daemon thread waits on the coordinator's pidfd (or
    polls it) and kills this process when it is gone. Elsewhere than Linux: a no-op."""
    import signal

    if not sys.platform.startswith("linux"):
        return
    if os.getppid() == coordinator:
        try:
            import ctypes

            if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != coordinator:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    import threading

    threading.Thread(target=_kill_self_when_gone, args=(coordinator,), name="orch-coordinator-watch",
                     daemon=True).start()


def _kill_self_when_gone(pid: int) -> None:
    import select
    import signal

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None  # already gone
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll
        while _process_exists(pid):
            time.sleep(0.5)
        fd = None
    else:
        select.select([fd], [], [])  # readable once the process has exited
    os.kill(os.getpid(), signal.SIGKILL)


def _process_exists(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_encoded(node_id: int, payload: bytes) -> bytes:
    """Worker entry: unpickle a Task, execute it, return its pickled TaskResult. Never raises for
    anything a node can cause; the result says what failed."""
    result = _run_payload(node_id, payload)
    if result.status == Status.FAILED and _Worker.where:
        result.error = f"{result.error} [on {_Worker.where}]"
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except PICKLING_ERRORS as e:
        return pickle.dumps(_unpicklable_output(result, e), protocol=pickle.HIGHEST_PROTOCOL)


def _run_payload(node_id: int, payload: bytes) -> TaskResult:
    if _Worker.store is None or _Worker.setup_error:
        where = f" on {_Worker.where}" if _Worker.where else ""
        return TaskResult(node_id, Status.FAILED, error=f"worker setup failed{where}: {_Worker.setup_error or 'not initialized'}",
                          error_type="WorkerSetupError")
    try:
        task = pickle.loads(payload)
    except Exception as e:  # an input value whose class cannot be imported here, ...
        return TaskResult(node_id, Status.FAILED, error=f"the task cannot be unpickled in the worker: {type(e).__name__}: {e}",
                          error_type="WorkerSetupError", traceback=traceback.format_exc())
    try:
        stage = import_stage(task.stage_ref)
    except Exception as e:
        return TaskResult(node_id, Status.FAILED, error=f"cannot import stage {task.stage_ref[0]}:{task.stage_ref[1]} "
                          f"in the worker: {type(e).__name__}: {e}", error_type="WorkerSetupError",
                          traceback=traceback.format_exc())
    return execute(task, _Worker.store, stage)


def _unpicklable_output(result: TaskResult, error: BaseException) -> TaskResult:
    bad = []
    for name, value in result.values.items():
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except PICKLING_ERRORS:
            bad.append(f"{name!r} ({type(value).__name__})")
    what = f"output {', '.join(bad)}" if bad else "its result"
    return TaskResult(result.node_id, Status.FAILED, duration=result.duration, error_type="StageOutputError",
                      error=f"{what} is kept in memory only (no cacher) and cannot be pickled to send it back from "
                            f"the worker process ({type(error).__name__}: {error}); give the output a cacher, or "
                            f"run without --parallel/MPI")


def encode_task(task: Task) -> bytes | TaskResult:
    """Pickle a task for another process, or return its failure when an in-memory input cannot be."""
    task.return_cached_values = False
    try:
        return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    except PICKLING_ERRORS as e:
        bad = []
        for inp in task.inputs:
            if inp.in_memory:
                try:
                    pickle.dumps(inp.value, protocol=pickle.HIGHEST_PROTOCOL)
                except PICKLING_ERRORS:
                    bad.append(f"{inp.name!r} ({type(inp.value).__name__})")
        what = f"input {', '.join(bad)}" if bad else "the task"
        return TaskResult(task.node_id, Status.FAILED, error_type="StageOutputError",
                          error=f"stage {task.label}: {what} is an in-memory output (no cacher) that cannot be pickled "
                                f"to send it to a worker process ({type(e).__name__}: {e}); give its producer's "
                                f"output a cacher, or run without --parallel/MPI")


def decode_result(data: bytes) -> TaskResult:
    return pickle.loads(data)


