"""The body of `orch run`, without click: cli.run_command (click) and the launcher's fast path
(orchestrator.fastrun) both parse the command line into RunArgs and call run(), so there is one body."""

from __future__ import annotations

import os
import sys

from .echo import echo
from .errors import OrchError

#: RunArgs' fields: the parameter names of cli.run_command, in its order
FIELDS = ("experiment", "params", "overrides", "cache", "overwrite", "overwrite_stages", "dry", "quiet", "progress",
          "parallel", "executor", "slurm_partition", "slurm_account", "slurm_time", "detach")


class RunArgs:
    """The `orch run` options as click converts them (paths as str, tuples for repeatable options).
    A plain class, not a dataclass: defining one costs 2-3 M instructions at import."""

    __slots__ = FIELDS

    def __init__(self, experiment: str | os.PathLike, params: tuple[str, ...] = (), overrides: tuple[str, ...] = (),
                 cache: str | os.PathLike | None = None, overwrite: bool = False, overwrite_stages: tuple[str, ...] = (),
                 dry: bool = False, quiet: bool = False, progress: bool | None = None, parallel: int = 1,
                 executor: str = "local", slurm_partition: str | None = None, slurm_account: str | None = None,
                 slurm_time: str | None = None, detach: bool = False):
        self.experiment = experiment
        self.params = params
        self.overrides = overrides
        self.cache = cache
        self.overwrite = overwrite
        self.overwrite_stages = overwrite_stages
        self.dry = dry
        self.quiet = quiet
        self.progress = progress
        self.parallel = parallel
        self.executor = executor
        self.slurm_partition = slurm_partition
        self.slurm_account = slurm_account
        self.slurm_time = slurm_time
        self.detach = detach

    def as_dict(self) -> dict:
        """The values by name, as click's ctx.params holds them."""
        return {name: getattr(self, name) for name in FIELDS}


def _as_path(cache: str | os.PathLike | None) -> str | None:
    """--cache as the readers take it (a click Path there): "" is the current directory, as Path("") is."""
    return None if cache is None else (os.fspath(cache) or ".")


def slurm_settings(executor: str, parallel: int, partition, account, time_limit, detach: bool,
                   quiet: bool = False) -> dict | None:
    """The run's Slurm overrides, or None for a local run (where --slurm-* options are a mistake)."""
    given = {"partition": partition, "account": account, "time": time_limit}
    if executor != "slurm":
        named = [f"--slurm-{k}" for k, v in given.items() if v is not None] + (["--detach"] if detach else [])
        if named:
            raise OrchError(f"{', '.join(named)} only apply with --executor slurm")
        return None
    if parallel > 1:
        raise OrchError("--parallel is for local runs; with --executor slurm every node is its own job")
    return {**{k: v for k, v in given.items() if v is not None}, "detach": detach, "quiet": quiet}


def run(args: RunArgs, debug: bool) -> int:
    """Run EXPERIMENT for every parameter set; the exit code (OrchError and KeyboardInterrupt propagate:
    the caller reports them as click's Group.invoke does)."""
    from . import session
    from .executors.launch import detect_launch
    from .interrupts import terminate_as_interrupt
    from .runs.console import Console
    from .runs.progress import progress_options

    slurm = slurm_settings(args.executor, args.parallel, args.slurm_partition, args.slurm_account, args.slurm_time,
                           args.detach, args.quiet)
    opts = session.RunOptions(experiment=args.experiment, params=list(args.params), overrides=list(args.overrides),
                              cache=_as_path(args.cache), overwrite=args.overwrite,
                              overwrite_stages=list(args.overwrite_stages), dry=args.dry, parallel=args.parallel,
                              argv=sys.argv[1:], slurm=slurm)
    launch = detect_launch()
    if slurm is not None and launch.kind != "local":
        raise OrchError(f"--executor slurm submits jobs from a login node; it cannot run under {launch.kind}")
    if not launch.leader:  # an MPI or torchrun rank other than 0: it prints nothing of the run
        return session.serve_rank(opts, launch)
    if launch.kind != "local":
        if hasattr(sys.stdout, "reconfigure"):  # progress shows live; nothing is lost if MPI aborts
            sys.stdout.reconfigure(line_buffering=True)
        if args.parallel > 1:
            how = ("ranks 1..n-1 run the nodes" if launch.kind == "mpi"
                   else "rank 0 runs the nodes, distributed stages run on every rank")
            echo(f"note: --parallel is ignored under {launch.kind}: {how}", err=True)
    console = Console(debug=debug, quiet=args.quiet)
    shown = progress_options(args.progress, args.quiet)
    terminate_as_interrupt()
    result = session.run_experiment(opts, on_done=console.node_done, launch=launch, progress=shown)
    if args.dry:
        console.dry_plan(result)
        return 0
    if result.detached is not None:
        echo(f"detached: run {result.run_id}, {len(result.detached)} Slurm job(s) in flight "
             f"({' '.join(result.detached)}); `orch status {result.run_id}` follows them; `orch run` again "
             f"with the same arguments re-attaches and submits what they unblock")
        return 1 if result.failed else 0
    console.summary(result)
    return 1 if result.failed else 0
