"""The `orch` command line. Thin: parses options, calls session/store code, prints results.

User mistakes (OrchError) are printed without a traceback and exit 1; `--debug` shows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import OrchError


class OrchClickError(click.ClickException):
    """An OrchError as click reports it: the message, no traceback, exit 1."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message


class Group(click.Group):
    """Turns OrchError into a clean message unless --debug asked for the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OrchError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise OrchClickError(str(e)) from e
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during `orch run` (interrupts.py): 130 / 143
            from .interrupts import Terminated, exit_code

            click.echo("\nterminated (SIGTERM)" if isinstance(e, Terminated) else "\ninterrupted", err=True)
            ctx.exit(exit_code(e))


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["debug"] = True


#: How a parameter set may be named wherever a user names one (runs.paramsets).
SET_FORMS = "its name, or some of its swept values that identify it (e.g. lr=0.1,width=16)"


def debug_option(f):
    """--debug works before or after the subcommand (`orch --debug run` and `orch run --debug`)."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show full tracebacks.")(f)


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="orch", prog_name="orch")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """orch: a cached DAG experiment orchestrator."""
    ctx.ensure_object(dict)["debug"] = debug


def slurm_options(f):
    """--executor and the run-wide Slurm overrides (see README "Slurm"); per stage: resources=."""
    for option in reversed([
        click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                     help="Where nodes run: here (local, see --parallel) or as Slurm jobs (slurm: a sweep's "
                          "ready points of one stage go out as one job array)."),
        click.option("--slurm-partition", metavar="NAME", help="Partition of every job (over the stages' own)."),
        click.option("--slurm-account", metavar="NAME", help="Account every job is charged to."),
        click.option("--slurm-time", metavar="TIME", help="Time limit of every job (minutes or HH:MM:SS)."),
        click.option("--detach", is_flag=True, help="With --executor slurm: submit what is ready and return; "
                     "`orch status` follows the jobs, `orch run` again re-attaches and submits what they unblock."),
    ]):
        f = option(f)
    return f


@main.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False))  # str, as fastrun gives it
@click.option("--params", "-p", "params", multiple=True, type=click.Path(dir_okay=False),
              help="Parameter file (YAML or .py); repeatable.")
@click.option("--set", "-S", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter in every set, e.g. -S train.lr=0.01 (VALUE is YAML).")
@click.option("--cache", type=click.Path(file_okay=False), envvar="ORCH_CACHE",
              help="Cache directory (default: .orch next to the experiment; env ORCH_CACHE).")
@click.option("--overwrite", is_flag=True, help="Re-run every stage.")
@click.option("--overwrite-stage", "overwrite_stages", multiple=True, metavar="NAME",
              help="Re-run this stage and everything downstream of it; repeatable.")
@click.option("--dry", is_flag=True, help="Show what would run or come from the cache, run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No line per node; only failures and the summary.")
@click.option("--progress/--no-progress", "progress", default=None,
              help="Show what is running: a live area on a terminal, else a 'started' line per slow node and a "
                   "heartbeat (env ORCH_PROGRESS_AFTER, ORCH_PROGRESS_EVERY: seconds). Default: shown unless --quiet.")
@click.option("--parallel", "-j", "parallel", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Run up to N nodes at once in local worker processes. Under mpiexec/mpirun the MPI ranks "
                   "are the workers instead (rank 0 schedules, ranks 1..n-1 run nodes).")
@slurm_options
@debug_option
@click.pass_context
def run_command(ctx, experiment, params, overrides, cache, overwrite, overwrite_stages, dry, quiet, progress,
                parallel, executor, slurm_partition, slurm_account, slurm_time, detach):
    """Run EXPERIMENT (an experiment.py) for every parameter set, from the cache where possible."""
    from .runcommand import RunArgs, run

    args = RunArgs(experiment=experiment, params=params, overrides=overrides, cache=cache, overwrite=overwrite,
                   overwrite_stages=overwrite_stages, dry=dry, quiet=quiet, progress=progress, parallel=parallel,
                   executor=executor, slurm_partition=slurm_partition, slurm_account=slurm_account,
                   slurm_time=slurm_time, detach=detach)
    code = run(args, ctx.obj["debug"])
    if code:
        ctx.exit(code)


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("stage")
@click.option("--params", "-p", "params", multiple=True, type=click.Path(dir_okay=False),
              help="Parameter file (YAML or .py); repeatable.")
@click.option("--set", "-S", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a parameter in every set.")
@click.option("--param-set", "param_set", default=None, metavar="SET",
              help="Only this parameter set (default: every set): " + SET_FORMS + ".")
@click.option("--dry", is_flag=True, help="Show what would be accepted; change nothing.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), envvar="ORCH_CACHE",
              help="Cache directory (default: .orch next to the experiment; env ORCH_CACHE).")
@debug_option
@click.pass_context
def accept(ctx, experiment, stage, params, overrides, param_set, dry, cache):
    """Declare that STAGE's current code gives the same results as the code its cached entries were
    computed with (a refactor, a log line): re-key them to the current code without running it, so
    the next run finds STAGE and everything downstream cached. Refused, saying why, where anything
    but the code changed (parameters it read, inputs, version, declaration). Recorded with who and
    when; `orch why` and the run report show it."""
    from . import session
    from .core.accept import REFUSED

    opts = session.RunOptions(experiment=experiment, params=list(params), overrides=list(overrides), cache=cache,
                              dry=True)
    results = session.accept_code(opts, stage, param_set, dry)
    for r in results:
        click.echo(f"{r.outcome:<13}{r.node.label}: {r.detail}", err=r.outcome == REFUSED)
    if any(r.outcome == REFUSED for r in results):
        ctx.exit(1)


@main.command("get")
@click.argument("name")
@click.option("--run", "run_id", default="latest", show_default=True, help="Run id (or a unique prefix of one).")
@click.option("--param-set", "param_set", default=None, metavar="SET",
              help="Parameter set, needed when several have NAME: " + SET_FORMS + ". With --run latest, a "
                   "set that run lacks comes from the latest run that has it (a warning says which).")
@click.option("-o", "--output", "output", default=".", show_default=True, type=click.Path(path_type=Path),
              help="Where to copy it: a new path, or an existing directory to copy into.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), envvar="ORCH_CACHE",
              help="Cache directory (default: the nearest .orch in this directory or its parents; env ORCH_CACHE).")
@click.option("--force", is_flag=True, help="Replace an existing file at the destination.")
@debug_option
def get(name, run_id, param_set, output, cache, force):
    """Copy the stored artifact NAME of a past run out of the cache (a file or a directory)."""
    from .artifacts.retrieve import export, locate

    artifact = locate(name, run=run_id, param_set=param_set, cache=cache)
    for path in export(artifact, output, force=force):
        click.echo(f"{path}  ({artifact.name} of run {artifact.run_id} [{artifact.param_set}], stage {artifact.stage})")


def cache_option(f):
    return click.option("--cache", type=click.Path(file_okay=False, path_type=Path), envvar="ORCH_CACHE",
                        help="Cache directory (default: the nearest .orch here or above; env ORCH_CACHE).")(f)


@main.command()
@click.argument("run_id", default="latest", metavar="[RUN]")
@cache_option
@debug_option
def status(run_id, cache):
    """Where each node of RUN (default: the latest) stands, with its Slurm job: cached, ran/done,
    failed, skipped, queued, running, waiting for its inputs, or blocked by a failed upstream node."""
    from .runs.slurmstatus import run_status
    from .store import cache_dir

    manifest, states = run_status(cache_dir(cache), run_id)
    click.echo(f"run {manifest.get('run_id', run_id)}: {manifest.get('status', '?')}")
    width = max((len(s.label) for s in states), default=0)
    for s in states:
        job = f"job {s.job}" + (f" on {s.node}" if s.node else "") if s.job else ""
        click.echo(f"{s.state:<8}{s.label:<{width}}  {job}" + (f"  ({s.detail})" if s.detail else ""))


@main.command()
@click.argument("experiment", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--params", "-p", "params", multiple=True, type=click.Path(dir_okay=False),
              help="Parameter file (with EXPERIMENT); repeatable.")
@click.option("--set", "-S", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a parameter (with EXPERIMENT).")
@click.option("--run", "run_id", default="latest", show_default=True, help="Without EXPERIMENT: the past run to explain.")
@click.option("--stage", default=None, help="Only this stage.")
@click.option("--param-set", "param_set", default=None, metavar="SET", help="Only this parameter set: " + SET_FORMS + ".")
@cache_option
@debug_option
def why(experiment, params, overrides, run_id, stage, param_set, cache):
    """Why nodes run: with EXPERIMENT, what the next run would do and why (nothing runs); without it,
    why the nodes of a past run ran (--run, default the latest)."""
    from .core.status import Status
    from .runs.console import print_why

    if experiment is not None:
        from . import session

        opts = session.RunOptions(experiment=experiment, params=list(params), overrides=list(overrides),
                                  cache=cache, dry=True)
        result = session.run_experiment(opts)
        if param_set is not None:
            from .runs.paramsets import resolve_param_set

            names = [o.node.set_name for o in result.outcomes]
            param_set = resolve_param_set(param_set, names, "this experiment")
        rows = [{"stage": o.node.stage.name, "param_set": o.node.set_name, "status": o.status, "reason": o.reason}
                for o in result.outcomes if (o.status != Status.CACHED or o.entry is not None and o.entry.accepted)
                and (not stage or o.node.stage.name == stage) and (not param_set or o.node.set_name == param_set)]
        print_why(rows, f"{len(result.outcomes)} nodes planned")
        return
    from .runs.manifest import read_manifest, why_rows
    from .store import cache_dir

    manifest = read_manifest(cache_dir(cache), run_id)
    print_why(why_rows(manifest, stage, param_set), f"run {manifest['run_id']}")


@main.command()
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@cache_option
@debug_option
def runs(limit, cache):
    """List past runs, newest first."""
    from .runs.console import print_runs
    from .runs.manifest import list_runs
    from .store import cache_dir

    print_runs(list_runs(cache_dir(cache), limit))


@main.command()
@click.argument("run_id", default="latest")
@click.option("--html", is_flag=True, help="Write the run's HTML report (runs/<id>/report.html) and print its path.")
@cache_option
@debug_option
def show(run_id, html, cache):
    """Show one run: its parameter sets and every node with status, duration and outputs."""
    from .store import cache_dir

    if html:
        from .runs.report import report_for_run

        click.echo(report_for_run(cache_dir(cache), run_id))
        return
    from .runs.console import print_run
    from .runs.manifest import read_manifest

    print_run(read_manifest(cache_dir(cache), run_id))


@main.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option("--all-params", is_flag=True, help="Every parameter, not only those that differ between the rows.")
@click.option("--sort", "sort", default=None, metavar="COLUMN",
              help="Sort by a metric, parameter or duration_s, ascending; -COLUMN descending.")
@click.option("--metric", "-m", "metrics", multiple=True, metavar="GLOB", help="Only these metric columns; repeatable.")
@click.option("--higher", multiple=True, metavar="GLOB",
              help="Metrics where higher is better (beyond names like acc, f1, auc, score); repeatable.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table",
              show_default=True)
@cache_option
@debug_option
def compare(run_ids, all_params, sort, metrics, higher, fmt, cache):
    """Compare the parameter sets of runs (default: the latest): one row per set, the parameters that
    differ, final metrics and compute time; the best value of each metric is marked."""
    from .runs.compare import build_comparison, render
    from .runs.manifest import read_manifest
    from .store import cache_dir

    root = cache_dir(cache)
    manifests = [read_manifest(root, r) for r in dict.fromkeys(run_ids or ("latest",))]
    comparison = build_comparison(manifests, all_params=all_params, sort=sort, metric_patterns=metrics,
                                  higher=higher)
    click.echo(render(comparison, fmt), nl=False)


@main.command()
@click.argument("run_id", default="latest")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it (default: report.html in the run's directory).")
@cache_option
@debug_option
def report(run_id, output, cache):
    """(Re)write the HTML report of a past run (default the latest) from its manifest; prints its path."""
    from .runs.report import report_for_run
    from .store import cache_dir

    click.echo(report_for_run(cache_dir(cache), run_id, output))


@main.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--params", "-p", "params", multiple=True, type=click.Path(dir_okay=False),
              help="Parameter file (YAML or .py); repeatable.")
@click.option("--set", "-S", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a parameter in every set.")
@click.option("--format", "-f", "fmt", type=click.Choice(["svg", "dot", "png"]), default=None,
              help="Write a picture instead of printing the DAG: svg (drawn by orch), dot (Graphviz source) "
                   "or png (needs Graphviz's dot). Default with -o: from its suffix, else svg.")
@click.option("-o", "--output", default=None, metavar="PATH",
              help="Write the picture to PATH instead of printing the DAG (-f alone: dag.FORMAT here); "
                   "- writes svg or dot to stdout.")
@click.option("--stages/--nodes", "stages", default=None,
              help="One tree (or box) per stage, or every node: one tree per parameter set (default: every "
                   "node up to 60, else one per stage).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), envvar="ORCH_CACHE",
              help="Cache directory (default: .orch next to the experiment; env ORCH_CACHE).")
@debug_option
def graph(experiment, params, overrides, fmt, output, stages, cache):
    """Print the DAG the next run of EXPERIMENT would execute: each node cached, will run (and why) or
    pending; -o/-f write a picture instead (plans only: nothing runs)."""
    from . import session
    from .core.status import Status
    from .runs.manifest import node_rows

    if output == "-" and fmt == "png":
        raise click.UsageError("-o - writes text; give --format png a file name")
    opts = session.RunOptions(experiment=experiment, params=list(params), overrides=list(overrides),
                              cache=cache, dry=True)
    result = session.run_experiment(opts)
    rows = node_rows(result.outcomes)
    if output is None and fmt is None:
        from .runs.tree import render as render_text

        click.echo(render_text(rows, stages, colour=sys.stdout.isatty()), nl=False)
        return

    from .runs.drawing import format_of, render
    from .runs.report import write_file

    fmt = fmt or format_of(output)
    data = render(rows, fmt, stages)
    if output == "-":
        click.echo(data.decode("utf-8"), nl=False)
        return
    path = Path(output or f"dag.{fmt}")
    write_file(path, data)
    c = result.counts()
    click.echo(f"{path}: {len(result.outcomes)} nodes, {c.get(Status.RUN, 0)} to run, {c.get(Status.PENDING, 0)} "
               f"pending, {c.get(Status.CACHED, 0)} cached")


@main.group(cls=Group)
def cache():
    """Inspect and maintain the cache directory."""


def _store(cache, write: bool = True):
    """The cache of a `cache` command; `write=False` for those that only read (a read-only cache is fine)."""
    from .store import DiskStore, cache_dir

    return DiskStore(cache_dir(cache), write=write)


@cache.command("ls")
@cache_option
@debug_option
def cache_ls(cache):
    """Entries, objects and bytes in the cache, per stage."""
    from .runs.console import print_cache_stats
    from .store.maintenance import stats

    store = _store(cache, write=False)
    print_cache_stats(store.root, stats(store))


@cache.command("verify")
@cache_option
@debug_option
@click.pass_context
def cache_verify(ctx, cache):
    """Re-hash every stored object; damaged ones are quarantined and their entries dropped (they re-run)."""
    from .store.maintenance import verify

    report = verify(_store(cache))
    for line in report.damaged:
        click.echo(f"damaged: {line}", err=True)
    click.echo(f"{report.checked} objects checked, {len(report.damaged)} damaged, "
               f"{report.dropped_entries} entries dropped")
    if report.damaged:
        ctx.exit(1)


@cache.command("gc")
@click.option("--dry", is_flag=True, help="Only say what would be deleted.")
@click.option("--grace", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="Keep unreferenced objects younger than this many seconds (a running orch may need them).")
@click.option("--keep-runs", type=click.IntRange(min=0), default=None, metavar="N",
              help="Also delete the records of all runs but the newest N, everyone's in a shared cache "
                   "(manifest, report, logs; never the latest, one in progress or with Slurm jobs in flight). "
                   "Default: keep every run record.")
@cache_option
@debug_option
def cache_gc(dry, grace, keep_runs, cache):
    """Delete objects no entry references, staging leftovers of killed runs (older than a day),
    checkpoint directories of failed stages untouched for a week, and what `--executor slurm` left:
    the job folders and code snapshots of runs no longer in flight. With --keep-runs N, also the
    records of older runs than the newest N: nothing re-runs for it, but `orch show/get/compare` and
    `orchestrator.load` no longer find those runs."""
    from .runs.slurmgc import gc_slurm
    from .store.maintenance import gc

    store = _store(cache)
    report = gc(store, grace_s=grace, dry=dry)
    slurm = gc_slurm(Path(store.root), dry=dry)
    verb = "would delete" if dry else "deleted"
    click.echo(f"{verb} {report.objects} objects ({report.bytes / 1e6:.1f} MB), {report.staging} staging leftovers, "
               f"{report.locks} old lock files and {report.checkpoint_dirs} checkpoint directories of failed stages "
               f"untouched for a week")
    if slurm.job_folders or slurm.snapshots or slurm.kept_runs:
        click.echo(f"{verb} {slurm.job_folders} Slurm job folders and {slurm.snapshots} code snapshots of finished "
                   f"runs" + (f"; kept those of {slurm.kept_runs} run(s) in flight" if slurm.kept_runs else ""))
    if slurm.skipped:
        click.echo(f"note: {slurm.skipped}", err=True)
    for problem in slurm.failed:
        click.echo(f"warning: could not delete {problem}", err=True)
    if keep_runs is not None:
        from .runs.retention import prune_runs

        runs = prune_runs(Path(store.root), keep_runs, dry=dry)
        still = f" and {len(runs.kept)} older one(s) still needed" if runs.kept else ""
        click.echo(f"{verb} {runs.runs} run record(s) ({runs.bytes / 1e6:.1f} MB); kept the newest {keep_runs}{still}")
        for kept in runs.kept:
            click.echo(f"note: kept run {kept}", err=True)
        for problem in runs.failed:
            click.echo(f"warning: could not delete {problem}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
