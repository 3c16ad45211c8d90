"""What the progress displays say, and the plain lines for logs (runs/progress.py has the state).

Imported when the first node of a run starts, never by a cached run. Everything here runs on the
display's thread: it reads a `Snapshot` of the run, the running nodes' metrics streams (their tails,
orchestrator.metrics.latest) and, once, the past durations of the run's stages (runs/eta.py).
"""

from __future__ import annotations

import sys
import threading
import time

from .progress import LIVE, Running, Snapshot, Watch

SHOWN_METRICS = 3  # per running node: its step and this many metrics
BEAT_NODES = 6  # running nodes named in one heartbeat line


def display_for(watch: Watch):
    """The display of the watch's mode: a live area on a terminal, plain lines elsewhere."""
    view = View(watch)
    if watch.options.mode == LIVE:
        from .liveterm import LiveArea

        return LiveArea(view.lines, watch.report)
    return PlainLines(view)


class View:
    """The text of the state: the counts, an ETA, each running node with its elapsed time, estimate
    and latest metrics."""

    def __init__(self, watch: Watch):
        self.watch = watch
        self._durations = None

    def durations(self):
        """Past durations of this run's stages, read once, when first needed (runs/eta.py)."""
        if self._durations is None:
            from .eta import past_durations

            self._durations = past_durations(self.watch.cache_root, {n.stage.id for n in self.watch.nodes})
        return self._durations

    def lines(self, max_lines: int) -> list[str]:
        """The live area: the counts and ETA, then one line per running node (longest-running first)."""
        snap = self.watch.snapshot()
        lines = [f"orch: {counts(snap)}, {clock(snap.elapsed)}{self.eta(snap)}"]
        shown = snap.running if len(snap.running) < max_lines else snap.running[:max(0, max_lines - 2)]
        lines.extend("  " + self.describe(r, snap) for r in shown)
        if len(shown) < len(snap.running):
            lines.append(f"  ... and {len(snap.running) - len(shown)} more running")
        return lines

    def eta(self, snap: Snapshot) -> str:
        """`, ETA ~2m30s`: the remaining time of the running nodes plus the estimates of the pending
        ones, shared by the slots, and at least the longest running one's. `>` when some nodes have no
        estimate (or ran past theirs); nothing when too little is known."""
        durations = self.durations()
        known, longest, unknown = 0.0, 0.0, 0
        for r in snap.running:
            estimate = durations.estimate(r.stage_id, r.set_name, snap.ran)
            left = None if estimate is None else estimate - (snap.now - r.since)
            if left is None or left < 0:
                unknown += 1
                continue
            known += left
            longest = max(longest, left)
        for stage_id, n in snap.pending.items():
            estimate = durations.estimate(stage_id, None, snap.ran)
            if estimate is None:
                unknown += n
            else:
                known += n * estimate
        seconds = max(longest, known / snap.slots)
        if unknown and seconds < 1:
            return ""
        return f", ETA {'>' + clock(seconds) if unknown else about(seconds)}"

    def describe(self, r: Running, snap: Snapshot) -> str:
        """`train [lr=0.1] 1m05s of ~1m40s  step 7  loss=0.125 acc=0.91`: elapsed time, the estimate,
        and the latest of what the node logged (read from its metrics stream's tail)."""
        from .. import metrics

        elapsed = snap.now - r.since
        text = f"{r.label} {clock(elapsed)}"
        estimate = self.durations().estimate(r.stage_id, r.set_name, snap.ran)
        if estimate is not None:
            text += f" of {about(estimate)}" if elapsed <= estimate else f" (usually {about(estimate)})"
        step, values = metrics.latest(r.metrics_path) if r.metrics_path else (None, {})
        if step is not None:
            text += f"  step {step}"
        if values:
            shown = list(values.items())[:SHOWN_METRICS]
            text += "  " + " ".join(f"{name}={_number(v)}" for name, v in shown)
        return printable(text)

    def started(self, r: Running, snap: Snapshot) -> str:
        estimate = self.durations().estimate(r.stage_id, r.set_name, snap.ran)
        usually = f"; usually {about(estimate)}" if estimate is not None else ""
        return printable(f"started {r.label} {clock(snap.now - r.since)} ago{usually}")

    def beat(self, snap: Snapshot) -> str:
        line = f"progress {clock(snap.elapsed)}: {counts(snap)}{self.eta(snap)}"
        if snap.running:
            named = snap.running[:BEAT_NODES]
            line += "; running: " + "; ".join(self.describe(r, snap) for r in named)
            if len(named) < len(snap.running):
                line += f"; and {len(snap.running) - len(named)} more"
        return line


def clock(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def about(seconds: float) -> str:
    """An estimate, rounded: ~3m05s, or <1s."""
    return "<1s" if seconds < 1 else "~" + clock(seconds + 0.5)


def counts(snap: Snapshot) -> str:
    failed = f" ({snap.failed} failed)" if snap.failed else ""
    pending = sum(snap.pending.values())
    return f"{snap.done}/{snap.total} done{failed}, {len(snap.running)} running, {pending} pending"


def printable(text: str) -> str:
    """A metric or parameter-set name with a newline or an escape code must not break a line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


class PlainLines:
    """For logs: a "started" line per node still running `after` seconds after it started, and a
    heartbeat line every `every` seconds. Written to stdout, through the same stream as the run's
    other lines, one write and a flush per batch of whole lines."""

    def __init__(self, view: View):
        self.view = view
        options = view.watch.options
        self.after, self.every = options.after, options.every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        pass

    def launch(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="orch-progress", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        tick = max(0.05, min(1.0, self.after or 1.0, self.every) / 2)
        announced: set[tuple[int, float]] = set()
        last_beat = time.monotonic()
        try:
            while not self._stop.wait(tick):
                snap = self.view.watch.snapshot()
                lines = []
                for r in snap.running:
                    if (r.node_id, r.since) not in announced and snap.now - r.since >= self.after:
                        announced.add((r.node_id, r.since))
                        lines.append(self.view.started(r, snap))
                if snap.now - last_beat >= self.every:
                    last_beat = snap.now
                    lines.append(self.view.beat(snap))
                if lines:
                    sys.stdout.write("".join(line + "\n" for line in lines))
                    sys.stdout.flush()
        except Exception as e:  # said once; the run goes on
            self.view.watch.report(e)
