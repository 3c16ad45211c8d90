"""What a run prints: one line per node as it finishes, failures, and a summary."""

from __future__ import annotations

import click

from ..core.status import Status


class Console:
    def __init__(self, debug: bool = False, quiet: bool = False):
        self.debug = debug
        self.quiet = quiet

    def node_done(self, o) -> None:
        if o.status == Status.FAILED:
            click.echo(f"FAILED  {o.node.stage.name} [{o.node.set_name}] after {o.duration:.2f}s: "
                       f"{o.error_type}: {o.error}", err=True)
            if self.debug and o.traceback:
                click.echo(o.traceback.rstrip(), err=True)
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
        click.echo(line)

    def dry_plan(self, result) -> None:
        by_set: dict[str, list] = {}
        for o in result.outcomes:
            by_set.setdefault(o.node.set_name, []).append(o)
        for set_name, outs in by_set.items():
            click.echo(f"[{set_name}]")
            for o in outs:
                reason = f"  ({o.reason})" if o.reason else ""
                click.echo(f"  {o.status:<8}{o.node.stage.name}{reason}")
        c = result.counts()
        click.echo(f"dry run: {c.get('run', 0)} to run, {c.get('pending', 0)} pending on upstream, "
                   f"{c.get(Status.CACHED, 0)} cached")

    def summary(self, result) -> None:
        c = result.counts()
        parts = [f"{c.get(k, 0)} {k}" for k in (Status.RAN, Status.CACHED, Status.FAILED, Status.SKIPPED) if c.get(k)]
        click.echo(f"{len(result.outcomes)} nodes: {', '.join(parts) or 'nothing to do'} "
                   f"in {result.seconds:.2f}s; run {result.run_id}")
        for o in result.failed:
            click.echo(f"failed: {o.node.stage.name} [{o.node.set_name}]: {o.error_type}: {o.error}"
                       + ("" if self.debug else "  (--debug shows the traceback; the log is in the run directory)"),
                       err=True)


def print_why(rows: list[dict], what: str) -> None:
    if not rows:
        click.echo(f"{what}: everything comes from the cache")
        return
    width = max(len(f"{r['stage']} [{r['param_set']}]") for r in rows)
    for r in rows:
        click.echo(f"{r['status']:<8}{(r['stage'] + ' [' + r['param_set'] + ']'):<{width}}  {r['reason']}")
    fresh = sum(r["status"] != Status.CACHED for r in rows)
    accepted = len(rows) - fresh
    click.echo(f"{what}: {fresh} not from the cache" + (f", {accepted} cached after an accepted code change"
                                                         if accepted else ""))


def print_runs(rows: list[dict]) -> None:
    if not rows:
        click.echo("no runs yet")
        return
    for r in rows:
        counts = ", ".join(f"{v} {k}" for k, v in r["summary"].items())
        duration = f"{r['duration_s']:.2f}s" if isinstance(r["duration_s"], (int, float)) else "-"
        click.echo(f"{r['run_id']}  {r['status']:<8}{duration:>9}  {r['param_sets']} sets  {counts}")


def print_run(m: dict) -> None:
    click.echo(f"run {m['run_id']}  {m.get('status')}  started {m.get('started')}  finished {m.get('finished')}")
    click.echo(f"experiment {m.get('experiment')}  argv: {' '.join(m.get('argv', []))}")
    for n in m.get("nodes", []):
        outs = ", ".join(f"{k}={v[:10]}" for k, v in n.get("outputs", {}).items())
        click.echo(f"  {n['status']:<8}{n['stage']} [{n['param_set']}] {n.get('duration_s', 0):.2f}s  {outs}"
                   + (f"  ({n['reason']})" if n.get("reason") and n["status"] != Status.CACHED else ""))


def print_cache_stats(root, s) -> None:
    click.echo(f"{root}: {s.nodes} nodes, {s.entries} entries, {s.objects} objects, {s.bytes / 1e6:.1f} MB")
    for stage, (entries, size) in sorted(s.by_stage.items(), key=lambda kv: -kv[1][1]):
        click.echo(f"  {stage:<40} {entries:>6} entries {size / 1e6:>10.1f} MB")
