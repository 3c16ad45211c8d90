"""torchrun mode: `torchrun --nproc_per_node N orch run experiment.py ...`.

Rank 0 leads: it plans, runs every node in-process, writes every entry, the manifest and the
summary. A `@stage(..., distributed=True)` node that must run is run by *all* ranks together: rank
0 takes the node lock, re-checks the store, then publishes the task; the other ranks (followers)
run the same stage function on the same inputs (loaded from the store) and save nothing; rank 0
stores the outputs only if every rank succeeded. A cached distributed node is never published, so
every rank skips it. Followers never decide anything themselves, so ranks cannot disagree about
what is cached (that disagreement would hang a collective).

Rank 0 and the followers talk through small files in the shared cache directory
(`tmp/torchrun-<id>/`), polled with a growing sleep: waiting ranks use no CPU, and
`torch.distributed` stays entirely the stage's own (it may call init_process_group itself, or
`orchestrator.distributed.init_process_group`).

Failures: a stage failing on any rank fails the node, reported by rank 0 naming the rank. The rank
that failed destroys its process group, which wakes ranks blocked in a collective with an error
instead of a hang; later distributed stages of the run are then not started (their process group
is gone). Rank 0 ends every follower with its exit code; a rank that dies makes torchrun stop all.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import secrets
import socket
import sys
import time
from pathlib import Path

from ..core.status import Status
from ..fsutil import atomic_write_bytes, rmtree_force
from .base import InProcessExecutor
from .task import Task, TaskResult, execute
from .worker import Backoff, WorkerConfig, decode_result, encode_task, init_worker, run_encoded

# After a distributed stage failed, how long the other side may take to get out of the stage. A rank
# blocked where destroying the process group cannot reach it (a rendezvous, some NCCL calls) is not
# waited for longer: rank 0 reports without it, a follower exits so that torchrun stops the job.
GRACE = float(os.environ.get("ORCH_TORCHRUN_GRACE", "30"))


def _poll() -> Backoff:
    """Files on a shared filesystem are slower to poll than MPI: start at 1 ms, grow to 0.1 s."""
    return Backoff(first=0.001, most=0.1, factor=1.5)


def channel_dir(cache_root: str | os.PathLike, experiment: str | os.PathLike, argv: list[str]) -> Path:
    """Where the ranks of this launch talk: the same on every rank, different for every launch
    (torchrun's run id, restart count and rendezvous address) and every command line."""
    from ..hashing import hash_value

    env = os.environ
    ident = hash_value(["torchrun", env.get("TORCHELASTIC_RUN_ID", ""), env.get("TORCHELASTIC_RESTART_COUNT", ""),
                        env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""), env.get("WORLD_SIZE", ""),
                        os.fspath(experiment), list(argv)])
    return Path(cache_root) / "tmp" / f"torchrun-{ident[:24]}"


class Channel:
    """Files: session.json (rank 0's token), hello-<rank> (a follower's random nonce), msg-<seq>
    (rank 0 -> all), res-<seq>-<rank> (follower -> rank 0), bye-<rank> (follower leaving). Every
    write is an atomic rename.

    A crashed earlier launch with the same id may have left its files. Rank 0 moves them away first
    thing; a follower that got there before it may read the old session, but every message names
    the nonces of the followers rank 0 heard from in *this* launch, so an old message is never
    taken for a new one, and a follower re-announces itself when the session changes. No clocks."""

    def __init__(self, path: Path, rank: int, world_size: int):
        self.path, self.rank, self.world_size = Path(path), rank, world_size
        self.token = ""
        self.nonce = secrets.token_hex(8)
        self._nonces: dict[int, str] = {}  # rank 0: the followers it heard from

    # rank 0
    def open(self) -> None:
        if self.path.exists():  # left by a launch that reused this id: never read its messages
            stale = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(4)}")
            os.replace(self.path, stale)
            rmtree_force(stale, missing_ok=True)
        self.path.mkdir(parents=True)
        self.token = secrets.token_hex(8)
        self._write("session.json", {"token": self.token, "world_size": self.world_size})

    def publish(self, seq: int, message: dict, hello_timeout: float | None = None) -> None:
        """Write message `seq` for the followers, once each has said hello (at most `hello_timeout`)."""
        self._hellos(hello_timeout)
        self._write(f"msg-{seq:06d}", {"token": self.token, "nonces": dict(self._nonces), **message})

    def _hellos(self, timeout: float | None) -> None:
        backoff = _poll()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._nonces) < self.world_size - 1:
            for rank in range(1, self.world_size):
                data = None if rank in self._nonces else self._read(f"hello-{rank}")
                if data is not None and data.get("token") == self.token:
                    self._nonces[rank] = data["nonce"]
            if len(self._nonces) == self.world_size - 1 or (deadline is not None and time.monotonic() > deadline):
                return
            backoff.sleep()

    def results(self, seq: int, timeout: float | None = None) -> dict[int, tuple[TaskResult, float]]:
        """Every follower's (result, time it was known) for message `seq`, those that came within `timeout`."""
        pending = set(range(1, self.world_size))
        got: dict[int, tuple[TaskResult, float]] = {}
        backoff = _poll()
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending and (deadline is None or time.monotonic() < deadline):
            for rank in sorted(pending):
                data = self._read(f"res-{seq:06d}-{rank}")
                if data is not None and data.get("token") == self.token:
                    got[rank] = (decode_result(data["result"]), data["at"])
                    pending.discard(rank)
            if pending:
                backoff.sleep()
        return got

    def close(self, timeout: float = 10.0) -> None:
        """After the last message: wait (briefly) until every follower read it, then clean up."""
        deadline = time.monotonic() + timeout
        backoff = _poll()
        while time.monotonic() < deadline:
            if all(self._read(f"bye-{rank}") is not None for rank in range(1, self.world_size)):
                rmtree_force(self.path, missing_ok=True)
                return
            backoff.sleep()

    # followers
    def join(self) -> None:
        """Wait for rank 0's session and say hello to it."""
        backoff = _poll()
        while not self._follow_session():
            backoff.sleep()

    def _follow_session(self) -> bool:
        """Adopt the current session if it is not ours yet; True when we are in one."""
        data = self._read("session.json")
        if data is None or data.get("world_size") != self.world_size:
            return bool(self.token)
        if data["token"] != self.token:
            self.token = data["token"]
            self._write(f"hello-{self.rank}", {"token": self.token, "nonce": self.nonce})
        return True

    def next(self, seq: int, timeout: float | None = None) -> dict | None:
        backoff = _poll()
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            data = self._read(f"msg-{seq:06d}")
            if data is not None and data.get("token") == self.token and data["nonces"].get(self.rank) == self.nonce:
                return data
            self._follow_session()  # rank 0 may have replaced a leftover session we read first
            backoff.sleep()
        return None

    def answer(self, seq: int, result: bytes, at: float) -> None:
        self._write(f"res-{seq:06d}-{self.rank}", {"token": self.token, "result": result, "at": at})

    def bye(self) -> None:
        self._write(f"bye-{self.rank}", {"token": self.token})

    # files
    def _write(self, name: str, obj: dict) -> None:
        atomic_write_bytes(self.path / name, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def _read(self, name: str) -> dict | None:
        try:
            with open(self.path / name, "rb") as f:
                return pickle.loads(f.read())
        except FileNotFoundError:
            return None


def release_peers() -> None:
    """Destroy the stages' default process group, if one exists. After a failure on this rank it
    wakes the ranks blocked in a collective with this one (an error instead of waiting forever);
    at the end of a run it leaves nothing for torch to warn about."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        dist.destroy_process_group()
    except (RuntimeError, ValueError) as e:
        print(f"orch: could not destroy the process group of the distributed stages: {e}", file=sys.stderr)


class TorchrunLeader(InProcessExecutor):
    """Rank 0: runs every node here, one at a time (as the in-process executor does); distributed
    ones in step with the followers."""

    def __init__(self, channel: Channel):
        super().__init__()
        self.channel = channel
        self._seq = 0
        self._payload: bytes | None = None
        self._broken = ""  # label of the distributed stage whose failure broke the process group
        self._closed = False

    def submit(self, task: Task, stage) -> None:
        if not stage.distributed or self.channel.world_size == 1:
            super().submit(task, stage)
            return
        if self._broken:
            self._done.append(TaskResult(task.node_id, Status.FAILED, error_type="DistributedStageError", error=(
                f"not started: distributed stage {self._broken} failed earlier in this run and took the process "
                "group down with it; fix it and re-run")))
            return
        payload = encode_task(dataclasses.replace(task, save=False))
        if isinstance(payload, TaskResult):
            self._done.append(payload)
            return
        self._payload = payload
        self._done.append(execute(task, self.store, stage, gate=self))

    # the gate of execute(): called inside the node lock, after the re-check
    def begin(self, task: Task) -> None:
        self.channel.publish(self._seq, {"kind": "task", "node_id": task.node_id, "payload": self._payload})

    def end(self, task: Task, failure: TaskResult | None) -> TaskResult | None:
        """After rank 0's call returned (failure None) or raised: collect every rank's outcome; the
        node fails if any rank failed, with every rank's error (a collective error on one rank is
        often the echo of the real failure on another)."""
        failed_at = time.time()
        if failure is not None:
            self._broken = task.label
            release_peers()
        results = self.channel.results(self._seq, timeout=None if failure is None else GRACE)
        self._seq += 1
        failed = [(at, rank, r) for rank, (r, at) in results.items() if r.status != Status.RAN]
        if failure is None and not failed:
            return None
        if failure is None:
            self._broken = task.label
            release_peers()
        else:
            failed.append((failed_at, 0, failure))
        missing = sorted(set(range(1, self.channel.world_size)) - set(results))
        # Earliest first: once one rank fails, its peers' collectives fail too, a little later.
        failed.sort(key=lambda item: item[:2])
        _, rank, first = failed[0]
        where = "" if rank else f" [on torchrun rank 0 on {socket.gethostname()}]"
        error = first.error + where + "".join(f"; then rank {rank}: {r.error_type}: {r.error}" for _, rank, r in failed[1:])
        if missing:
            error += f"; rank(s) {', '.join(map(str, missing))} did not leave the stage within {GRACE:.0f}s"
        return TaskResult(task.node_id, Status.FAILED, duration=(failure.duration if failure else 0.0),
                          error_type=first.error_type, traceback=first.traceback, error=error)

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        release_peers()
        # a follower that never said hello is stuck or dead: torchrun stops it once rank 0 exits
        self.channel.publish(self._seq, {"kind": "done", "code": exit_code}, hello_timeout=GRACE)
        self.channel.close()


def follow(channel: Channel, config: WorkerConfig) -> int:
    """Ranks 1..N-1: run the distributed stages rank 0 publishes, until it says done."""
    init_worker(config, where=f"torchrun rank {channel.rank} on {socket.gethostname()}")
    channel.join()
    seq = 0
    while True:
        message = channel.next(seq)
        if message["kind"] == "done":
            release_peers()
            channel.bye()
            sys.stdout.flush()
            code = int(message["code"])
            if code:  # leave after rank 0, so that torchrun reports rank 0's failure, not ours
                time.sleep(GRACE)
            return code
        data = run_encoded(message["node_id"], message["payload"])
        at = time.time()
        result = decode_result(data)
        if result.status != Status.RAN:
            release_peers()  # first: it wakes rank 0 if it waits for this rank in a collective
        channel.answer(seq, data, at)
        seq += 1
        if result.status != Status.RAN:
            if channel.next(seq, timeout=GRACE) is None:
                print(f"orch: {result.error}\norch: rank 0 did not get past the failed distributed stage within "
                      f"{GRACE:.0f}s; exiting so that torchrun stops every rank", file=sys.stderr, flush=True)
                return 1
