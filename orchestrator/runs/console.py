"""What a run prints: one line per node as it finishes, failures, and a summary.

A failure is said once: where it happens, its error (not the output an external command streamed
already, which is in the node's log) and the path of the node's log, which holds the traceback too;
the summary repeats one line per failed node. --debug prints the traceback instead of pointing to it."""

from __future__ import annotations

import os

from ..core.status import Status
from ..echo import echo

_FAILED = Status.FAILED  # looked up once: node_done runs for every node (an enum member lookup costs ~0.15 us)


class Console:
    def __init__(self, debug: bool = False, quiet: bool = False):
        self.debug = debug
        self.quiet = quiet

    def node_done(self, o) -> None:
        if o.status == _FAILED:
            echo(self._failure(o), err=True)
            return
        if self.quiet:
            return
        line = f"{o.status:<8}{o.node.stage.name} [{o.node.set_name}]"
        if o.status == Status.RAN:
            line += f" {o.duration:.2f}s" + (f"  ({o.reason})" if o.reason else "")
        elif o.status == Status.SKIPPED:
            line += f"  (upstream {o.skipped_because} failed)"
        elif o.status == Status.CACHED and o.reason:
            line += f"  ({o.reason})"
        echo(line)

    def dry_plan(self, result) -> None:
        by_set: dict[str, list] = {}
        for o in result.outcomes:
            by_set.setdefault(o.node.set_name, []).append(o)
        for set_name, outs in by_set.items():
            echo(f"[{set_name}]")
            for o in outs:
                reason = f"  ({o.reason})" if o.reason else ""
                echo(f"  {o.status:<8}{o.node.stage.name}{reason}")
        c = result.counts()
        echo(f"dry run: {c.get('run', 0)} to run, {c.get('pending', 0)} pending on upstream, "
                   f"{c.get(Status.CACHED, 0)} cached")

    def summary(self, result) -> None:
        c = result.counts()
        parts = [f"{c.get(k, 0)} {k}" for k in (Status.RAN, Status.CACHED, Status.FAILED, Status.SKIPPED) if c.get(k)]
        echo(f"{len(result.outcomes)} nodes: {', '.join(parts) or 'nothing to do'} "
                   f"in {result.seconds:.2f}s; " + (f"run {result.run_id}" if result.run_id else "not recorded"))
        log_dirs, tracebacks = [], False
        for o in result.failed:
            echo(f"failed: {o.node.stage.name} [{o.node.set_name}]: {o.error_type}: {_first_line(o.error)}",
                       err=True)
            tb, log = o.traceback or "", o.log_path
            tracebacks = tracebacks or bool(tb.strip())
            if log and os.path.dirname(log) not in log_dirs:
                log_dirs.append(os.path.dirname(log))
        if log_dirs:
            where = ", ".join(d + os.sep for d in log_dirs)
            echo(f"logs: {where}" if self.debug else f"tracebacks in the logs: {where} (--debug prints them)",
                       err=True)
        elif tracebacks and not self.debug:
            echo("(--debug prints the tracebacks)", err=True)

    def _failure(self, o) -> str:
        """A failed node, said once: the first line of its error, the rest of the message (an external
        command's command line, output it did not stream), or with --debug the user's traceback instead,
        and the log that holds it all (which an external command's message may already name)."""
        tb, log = o.traceback or "", o.log_path
        first, *rest = (o.error or "").splitlines() or [""]
        lines = [f"FAILED  {o.node.stage.name} [{o.node.set_name}] after {o.duration:.2f}s: {o.error_type}: {first}"]
        if self.debug and tb.strip():
            lines.append(tb.rstrip())
        else:
            lines.extend(_INDENT + line if line.strip() else "" for line in rest)
        if log and log not in (o.error or ""):
            lines.append(f"{_INDENT}  log: {log}")
        return "\n".join(lines)


_INDENT = " " * 8  # under the node's name, past the status column


def _first_line(text: str) -> str:
    return (text or "").partition("\n")[0]


def print_why(rows: list[dict], what: str) -> None:
    if not rows:
        echo(f"{what}: everything comes from the cache")
        return
    width = max(len(f"{r['stage']} [{r['param_set']}]") for r in rows)
    for r in rows:
        echo(f"{r['status']:<8}{(r['stage'] + ' [' + r['param_set'] + ']'):<{width}}  {r['reason']}")
    fresh = sum(r["status"] != Status.CACHED for r in rows)
    accepted = len(rows) - fresh
    echo(f"{what}: {fresh} not from the cache" + (f", {accepted} cached after an accepted code change"
                                                         if accepted else ""))


def print_runs(rows: list[dict]) -> None:
    """One line per run, newest first, in aligned columns: id, status, time, sets, node counts, command."""
    if not rows:
        echo("no runs yet")
        return
    lines = []
    for r in rows:
        duration = f"{r['duration_s']:.2f}s" if isinstance(r["duration_s"], (int, float)) else "-"
        order = [k for k in (Status.RAN, Status.CACHED, Status.FAILED, Status.SKIPPED) if k in r["summary"]]
        counts = ", ".join(f"{r['summary'][k]} {k}" for k in order + [k for k in r["summary"] if k not in order]) or "-"
        sets = "set" if r["param_sets"] == 1 else "sets"
        lines.append((r["run_id"], r["status"], duration, str(r["param_sets"]), sets, counts, _command(r.get("argv") or [])))
    w = [max(len(line[i]) for line in lines) for i in range(6)]
    for line in lines:
        run_id, status, duration, n, sets, counts, command = line
        echo(f"{run_id:<{w[0]}}  {status:<{w[1]}}  {duration:>{w[2]}}  {n:>{w[3]}} {sets:<{w[4]}}  "
                   f"{counts:<{w[5]}}  {command}")


COMMAND_CHARS = 90  # `orch runs` cuts a longer command here


def _command(argv: list[str], limit: int = COMMAND_CHARS) -> str:
    """The command of a run as typed (`orch run experiment.py -p params/sweep.yaml -S train.lr=0.3`),
    shortened when long: without --cache (the runs listed are that cache's), long paths by their
    last two parts, then cut at `limit`."""
    import shlex

    if not argv:
        return "-"
    text = "orch " + shlex.join(argv)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--cache":
            skip = True
        elif not arg.startswith("--cache="):
            kept.append(_short_path(arg))
    text = "orch " + " ".join(kept)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_path(arg: str) -> str:
    """An argument, quoted for a shell; a long path (not an option's KEY=VALUE) by its last two parts."""
    import shlex

    parts = arg.split("/")
    if len(arg) <= 40 or len(parts) <= 3 or "=" in arg:
        return shlex.quote(arg)
    return "…/" + shlex.quote("/".join(parts[-2:]))


def print_run(m: dict) -> None:
    echo(f"run {m['run_id']}  {m.get('status')}  started {m.get('started')}  finished {m.get('finished')}")
    echo(f"experiment {m.get('experiment')}  argv: {' '.join(m.get('argv', []))}")
    for n in m.get("nodes", []):
        outs = ", ".join(f"{k}={v[:10]}" for k, v in n.get("outputs", {}).items())
        echo(f"  {n['status']:<8}{n['stage']} [{n['param_set']}] {n.get('duration_s', 0):.2f}s  {outs}"
                   + (f"  ({n['reason']})" if n.get("reason") and n["status"] != Status.CACHED else ""))


def print_cache_stats(root, s) -> None:
    echo(f"{root}: {s.nodes} nodes, {s.entries} entries, {s.objects} objects, {s.bytes / 1e6:.1f} MB")
    for stage, (entries, size) in sorted(s.by_stage.items(), key=lambda kv: -kv[1][1]):
        echo(f"  {stage:<40} {entries:>6} entries {size / 1e6:>10.1f} MB")
