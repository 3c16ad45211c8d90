"""MPI: under `mpiexec -n N orch run ...` rank 0 plans and schedules, ranks 1..N-1 execute nodes, and
every rank uses the same store on a shared filesystem.

The protocol is mpi4py's pickled point-to-point messages with tags: a worker gets one CONFIG, then
TASK messages one at a time, and answers each with a RESULT; STOP (carrying rank 0's exit code)
ends it. Nobody blocks inside MPI: MPICH and Open MPI spin in blocking calls, and on an
oversubscribed node a spinning idle rank halves the speed of the ranks doing work. Every wait is
a non-blocking probe or Test() followed by a short, growing sleep.

Failures: a stage that raises is a failed node like any other, reported by rank 0 with the rank and
host. A rank that dies (crash, kill, `os._exit` in a stage) makes the launcher end the whole job,
usually: MPICH's hydra was seen to reap such a rank and leave the others waiting, about one time in
ten. So each worker tells rank 0 its pid (HELLO, with its first task), and rank 0, while it waits, checks every second
that the busy workers on its own host (same pid namespace) still exist, and aborts the job if one
is gone; ranks on other hosts are the launcher's to watch. An unexpected error in orch itself calls
MPI Abort (the `python -m mpi4py` semantics), so the job never hangs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback

from .base import Executor
from .task import Task, TaskResult
from .worker import Backoff, WorkerConfig, decode_result, encode_task, init_worker, run_encoded

TAG_CONFIG, TAG_TASK, TAG_STOP, TAG_RESULT, TAG_HELLO = 11, 12, 13, 14, 15
#: Seconds between rank 0's checks that its busy workers on this host are still alive.
LIVENESS_S = 1.0


def mpi_world():
    """COMM_WORLD when this process is one of several MPI ranks, else None. mpi4py (which
    initializes MPI) is imported only when the environment says an MPI launcher started us."""
    from .launch import mpi_size_from_env

    size = mpi_size_from_env()
    if size is None or size == 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        from ..errors import OrchError

        raise OrchError(
            "orch was launched by an MPI launcher (mpiexec/mpirun/srun) but mpi4py cannot be imported "
            f"({e}); install it with `pip install 'orch[mpi]'` (mpi4py and mpich) or run without mpiexec"
        ) from e
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _wait_request(request, backoff: Backoff | None = None, timeout: float | None = None) -> bool:
    """Complete a non-blocking request without spinning; False on timeout."""
    backoff = backoff or Backoff()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not request.Test():
        if deadline is not None and time.monotonic() > deadline:
            return False
        backoff.sleep()
    return True


def _identity() -> tuple[str, int, int | None]:
    """(host, pid, pid namespace): a pid means this process only to a process of the same host and
    namespace (ranks in separate containers of one node are not)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    return socket.gethostname(), os.getpid(), namespace


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: it exists
        return True
    return True


def where() -> str:
    from mpi4py import MPI

    return f"MPI rank {MPI.COMM_WORLD.Get_rank()} on {socket.gethostname()}"


class MPIExecutor(Executor):
    """Rank 0's side: hands each task to an idle rank and collects results as they come."""

    def __init__(self, comm, config: WorkerConfig):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self._idle = list(range(self.size - 1, 0, -1))  # pop() hands out rank 1 first
        self._busy: dict[int, str] = {}  # rank -> the label of the node it runs
        self._here = _identity()[::2]  # (host, pid namespace): whose pids this process can check
        self._pids: dict[int, int] = {}  # rank -> pid, of workers that said HELLO from here
        self._unheard: set[int] = set()  # workers given a task whose HELLO has not been received
        self._heard: set[int] = set()
        self._next_check = 0.0
        self._sends: list = []  # isend requests not known to be complete
        self._done: list[TaskResult] = []
        self._closed = False
        for rank in range(1, self.size):  # workers import the experiment while rank 0 plans
            self._sends.append(self.comm.isend(config, dest=rank, tag=TAG_CONFIG))

    @property
    def capacity(self) -> int:
        return self.size - 1

    def submit(self, task: Task, stage) -> None:
        payload = encode_task(task)
        if isinstance(payload, TaskResult):
            self._done.append(payload)
            return
        rank = self._idle.pop()
        self._busy[rank] = task.label
        if rank not in self._heard:
            self._unheard.add(rank)
        self._sends.append(self.comm.isend((task.node_id, payload), dest=rank, tag=TAG_TASK))

    def wait(self) -> list[TaskResult]:
        results, self._done = self._done, []
        status = self._MPI.Status()
        backoff = Backoff()
        while True:
            self._sends = [r for r in self._sends if not r.Test()]
            while self._busy:
                message = self.comm.improbe(source=self._MPI.ANY_SOURCE, tag=TAG_RESULT, status=status)
                if message is None:
                    break
                data = message.recv()
                rank = status.Get_source()
                self._busy.pop(rank, None)
                self._idle.append(rank)
                results.append(decode_result(data))
            if results:
                return results
            if not self._busy:
                raise RuntimeError("MPIExecutor.wait() called with nothing submitted")
            if time.monotonic() >= self._next_check:
                self._check_alive()
            backoff.sleep()

    def _check_alive(self) -> None:
        """Abort the job if a busy worker of this host has died (see the module docstring)."""
        self._next_check = time.monotonic() + LIVENESS_S
        self._receive_hellos()
        for rank, label in self._busy.items():
            pid = self._pids.get(rank)
            if pid is not None and not _alive(pid):
                sys.stdout.flush()
                print(f"orch: MPI rank {rank} (pid {pid} on {self._here[0]}) died while running "
                      f"{label}; aborting the MPI job", file=sys.stderr, flush=True)
                self.comm.Abort(1)

    def _receive_hellos(self) -> None:
        status = self._MPI.Status()
        while (message := self.comm.improbe(source=self._MPI.ANY_SOURCE, tag=TAG_HELLO, status=status)) is not None:
            host, pid, namespace = message.recv()
            rank = status.Get_source()
            self._unheard.discard(rank)
            self._heard.add(rank)
            if (host, namespace) == self._here:
                self._pids[rank] = pid

    def close(self, exit_code: int = 0) -> None:
        """Stop every worker with rank 0's exit code. If tasks are still running (rank 0 is leaving
        on an error of its own), abort the job rather than leave ranks computing for nobody."""
        if self._closed:
            return
        self._closed = True
        if self._busy:
            sys.stdout.flush()
            sys.stderr.flush()
            print(f"orch: rank 0 is stopping while {len(self._busy)} rank(s) still run nodes; aborting the MPI job",
                  file=sys.stderr, flush=True)
            self.comm.Abort(exit_code or 1)
        stops = [self.comm.isend(exit_code, dest=rank, tag=TAG_STOP) for rank in range(1, self.size)]
        for request in self._sends + stops:
            _wait_request(request, timeout=30)
        self._sends = []
        # a worker says HELLO once, with its first task and so before that task's result: receive
        # them all, so that no message is left unreceived when MPI finalizes (MPICH then kills the
        # job); workers never given a task say nothing, so an early error does not wait for them
        deadline, backoff = time.monotonic() + 30, Backoff()
        while self._unheard and time.monotonic() < deadline:
            self._receive_hellos()
            if self._unheard:
                backoff.sleep()


def worker_loop(comm) -> int:
    """Ranks 1..N-1: run tasks from rank 0 until told to stop; returns the exit code to use."""
    from mpi4py import MPI

    status = MPI.Status()
    backoff = Backoff()
    here = where()
    said_hello = False
    while True:
        message = comm.improbe(source=0, tag=MPI.ANY_TAG, status=status)
        if message is None:
            backoff.sleep()
            continue
        backoff.reset()
        obj = message.recv()
        tag = status.Get_tag()
        if tag == TAG_STOP:
            sys.stdout.flush()
            return int(obj)
        if tag == TAG_CONFIG:
            init_worker(obj, where=here)
        elif tag == TAG_TASK:
            if not said_hello:  # before the task runs: rank 0 can then tell if it dies running it
                _wait_request(comm.isend(_identity(), dest=0, tag=TAG_HELLO))
                said_hello = True
            node_id, payload = obj
            data = run_encoded(node_id, payload)
            _wait_request(comm.isend(data, dest=0, tag=TAG_RESULT))


def serve(comm) -> int:
    """A worker rank's whole life. An error of orch itself aborts the job: never a silent hang of
    rank 0 waiting for a result that will not come."""
    try:
        return worker_loop(comm)
    except BaseException:
        traceback.print_exc()
        sys.stderr.write(f"orch: {where()} failed; aborting the MPI job\n")
        sys.stderr.flush()
        sys.stdout.flush()
        comm.Abort(1)
        raise
