"""Progress while `orch run` works: what is done, what runs (for how long, its latest metric) and an ETA.

Two displays of the same state (runs/progressview.py). On a terminal, a live area below the run's
output (runs/liveterm.py). Elsewhere (CI, Slurm logs, a pipe), plain lines: "started" for a node still
running ORCH_PROGRESS_AFTER seconds after it started, and a heartbeat every ORCH_PROGRESS_EVERY seconds
with the counts and the running nodes; never an ANSI code.

This module is what every run imports: the options and the `Watch`, which the run loop tells what
happens (core.runner's on_start / on_done hooks, on the main thread). It is small and does nothing
until a node is handed to the executor: a fully cached run starts no thread, reads nothing and never
imports the display modules. The display's one thread reads the state through `snapshot()`, a copy
taken under a lock, and reads the running nodes' metrics streams and past durations (runs/eta.py)
itself, so the run loop never waits on a display.

The thread starts right before the first node runs in this process (the in-process executor runs it
inside submit) or right after it was handed to other processes: `--parallel` forks its workers on
that first submit, and fork is safe only while this process has a single thread (executors/pool.py).

A display that fails (a closed terminal, a bug) says so once on stderr and stops; the run goes on.
"""

from __future__ import annotations

import os
import sys
import time
from _thread import allocate_lock  # threading.Lock, without importing threading

from ..core.status import Status
from ..errors import ProgressError

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Callable

AFTER_VAR, AFTER_DEFAULT = "ORCH_PROGRESS_AFTER", 5.0  # a node's "started" line comes this long after it started
EVERY_VAR, EVERY_DEFAULT = "ORCH_PROGRESS_EVERY", 30.0  # seconds between two heartbeat lines
OFF, PLAIN, LIVE = "off", "plain", "live"
RECENT = 20  # durations kept per stage of the nodes that ran in this run


class ProgressOptions:
    """How a run shows progress: `mode` (OFF, PLAIN or LIVE) and the plain lines' two periods."""

    __slots__ = ("mode", "after", "every")

    def __init__(self, mode: str = OFF, after: float = AFTER_DEFAULT, every: float = EVERY_DEFAULT):
        self.mode, self.after, self.every = mode, after, every

    def __repr__(self) -> str:
        return f"ProgressOptions({self.mode!r}, after={self.after:g}, every={self.every:g})"


def progress_options(flag: bool | None, quiet: bool, stream=None, environ=os.environ) -> ProgressOptions:
    """`--progress/--no-progress` (None: auto, i.e. shown unless --quiet) and the environment: a live
    area when `stream` (stdout) is a terminal, plain lines otherwise."""
    after = _seconds(environ, AFTER_VAR, AFTER_DEFAULT, zero_ok=True)
    every = _seconds(environ, EVERY_VAR, EVERY_DEFAULT, zero_ok=False)
    if flag is False or (flag is None and quiet):
        return ProgressOptions(OFF, after, every)
    terminal = _is_terminal(sys.stdout if stream is None else stream, environ)
    return ProgressOptions(LIVE if terminal else PLAIN, after, every)


def _seconds(environ, name: str, default: float, zero_ok: bool) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 or zero_ok and value == 0) or value == float("inf"):
        raise ProgressError(f"{name}={text!r}: expected a number of seconds, "
                            f"{'0 or more' if zero_ok else 'more than 0'} (e.g. {name}={default:g})")
    return value


def _is_terminal(stream, environ) -> bool:
    """A live area needs stdout to be file descriptor 1 on a terminal that understands cursor moves."""
    if os.name != "posix" or environ.get("TERM", "") in ("", "dumb"):
        return False
    try:
        return stream.fileno() == 1 and os.isatty(1)
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout (a test runner's capture)
        return False


class Running:
    """A node handed to the executor and not finished yet."""

    __slots__ = ("node_id", "label", "stage_id", "set_name", "since", "metrics_path")

    def __init__(self, node, since: float, metrics_path: str | None):
        self.node_id = node.id
        self.label = f"{node.stage.name} [{node.set_name}]"  # as the console names it
        self.stage_id, self.set_name = node.stage.id, node.set_name
        self.since = since  # time.monotonic() when it was handed over
        self.metrics_path = metrics_path


class Snapshot:
    """The state at one moment, for a display (a copy: the run loop goes on meanwhile)."""

    __slots__ = ("now", "elapsed", "total", "done", "failed", "running", "pending", "ran", "slots")

    def __init__(self, now: float, elapsed: float, total: int, done: int, failed: int, running: tuple,
                 pending: dict[str, int], ran: dict[str, tuple[float, ...]], slots: int):
        self.now, self.elapsed = now, elapsed  # elapsed: since the run loop began
        self.total, self.done, self.failed = total, done, failed
        self.running = running  # Running, longest-running first
        self.pending = pending  # stage id -> its nodes neither running nor done
        self.ran = ran  # stage id -> durations of its nodes that ran in this run (the recent ones)
        self.slots = slots  # how many nodes can run at once


def watch_run(options: ProgressOptions | None, nodes: list, cache_root, executor, on_done: Callable) -> Watch:
    """The hooks of one run loop: `executor`, `on_done` and `on_start` for core.runner.Runner, and
    `close()` once the loop is over. Off (options None or mode OFF), they are the run's own."""
    return Watch(options or ProgressOptions(), nodes, cache_root, executor, on_done)


class Watch:
    """What the run loop reports, for a display; opens the display when the first node runs.

    Until then on_done only notes which nodes finished (cached ones, in a run that may run nothing):
    the per-stage counts are made once, when the first node starts."""

    def __init__(self, options: ProgressOptions, nodes: list, cache_root, executor, on_done: Callable):
        self.options = options
        self._next_done = on_done
        self._display = None
        if options.mode == OFF:
            self.executor, self.on_done, self.on_start = executor, on_done, _nothing
            return
        self.executor = _Watched(executor, self)
        self.on_done, self.on_start = self._done, self._started
        self.nodes, self.cache_root, self.slots = nodes, cache_root, executor.capacity
        self._t0 = time.monotonic()
        self._lock = allocate_lock()
        self._done_ids: set[int] = set()
        self._failed_ids: set[int] = set()
        self._pending: dict[str, int] | None = None  # per stage, made at the first start
        self._running: dict[int, Running] = {}
        self._ran: dict[str, list[float]] = {}
        self._reported = False

    # -- the run loop's side (main thread) -------------------------------------------------------
    def _started(self, node, task) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = {}
                for n in self.nodes:
                    if n.id not in self._done_ids:
                        self._pending[n.stage.id] = self._pending.get(n.stage.id, 0) + 1
            if node.id in self._done_ids:  # run again (an output of it was damaged)
                self._done_ids.discard(node.id)
            else:
                self._pending[node.stage.id] -= 1
            self._running[node.id] = Running(node, time.monotonic(), task.metrics_path)

    def _done(self, outcome) -> None:
        node = outcome.node
        if self._pending is None:  # nothing started yet (so no display thread): a cached node, noted
            self._done_ids.add(node.id)
            self._next_done(outcome)
            return
        with self._lock:
            if self._running.pop(node.id, None) is None and node.id not in self._done_ids:
                self._pending[node.stage.id] -= 1  # cached or skipped: never ran
            self._done_ids.add(node.id)
            if outcome.status == Status.FAILED:
                self._failed_ids.add(node.id)
            elif outcome.status == Status.RAN:
                durations = self._ran.setdefault(node.stage.id, [])
                durations.append(outcome.duration)
                del durations[:-RECENT]
        self._next_done(outcome)

    def open(self) -> None:
        """Before the first node is handed over: set the display up (a live area redirects output)."""
        if self._display is not None:
            return
        try:
            from .progressview import display_for

            self._display = display_for(self)
            self._display.open()
        except Exception as e:  # no pseudo-terminal left, ...: said once, the run goes on without
            self._display = _NoDisplay()
            self.report(e)

    def launch(self) -> None:
        """Start the display's thread (idempotent)."""
        if self._display is not None:
            self._display.launch()

    def close(self) -> None:
        """The run loop is over (or was interrupted): the display ends, its area is cleared. Idempotent."""
        if self._display is not None:
            self._display.close()

    # -- the display's side (its thread) ---------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        with self._lock:
            running = tuple(sorted(self._running.values(), key=lambda r: r.since))
            pending = {s: n for s, n in (self._pending or {}).items() if n > 0}
            return Snapshot(now, now - self._t0, len(self.nodes), len(self._done_ids), len(self._failed_ids), running,
                            pending, {s: tuple(d) for s, d in self._ran.items()}, max(1, self.slots))

    def report(self, error: BaseException | str, write: Callable[[str], None] | None = None) -> None:
        """Say once that the display failed (the run goes on without it)."""
        if self._reported:
            return
        self._reported = True
        what = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        text = f"orch: the progress display stopped ({what}); the run goes on without it\n"
        try:
            (write or _stderr)(text)
        except (OSError, ValueError):
            pass  # nowhere left to say it: stderr itself is gone


def _nothing(node, task) -> None:
    pass


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class _Watched:
    """The executor as the run loop sees it: the display opens before the first submit (a live area
    must catch the output of the workers that submit starts) and its thread starts around it."""

    def __init__(self, inner, watch: Watch):
        from ..executors.base import InProcessExecutor

        self.inner, self.watch = inner, watch
        self.runs_here = isinstance(inner, InProcessExecutor)  # submit runs the node: thread first

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def submit(self, task, stage) -> None:
        self.watch.open()
        if self.runs_here:
            self.watch.launch()
        self.inner.submit(task, stage)
        self.watch.launch()

    def wait(self):
        return self.inner.wait()


class _NoDisplay:
    def open(self) -> None:
        pass

    def launch(self) -> None:
        pass

    def close(self) -> None:
        pass
