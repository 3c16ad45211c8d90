"""One `orch run`: parameters -> graph -> plan -> run -> manifest. The CLI is a thin shell over this."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ExperimentError, OrchError, user_traceback
from .core.graph import Graph
from .params import ParamSet, load_params
from .stage import Stage


@dataclass
class RunOptions:
    experiment: Path
    params: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    cache: Path | None = None
    overwrite: bool = False
    overwrite_stages: list[str] = field(default_factory=list)
    dry: bool = False
    parallel: int = 1
    argv: list[str] = field(default_factory=list)


def cache_root(experiment: Path, cache: str | Path | None) -> Path:
    """--cache, else $ORCH_CACHE, else .orch/ next to the experiment."""
    chosen = cache or os.environ.get("ORCH_CACHE")
    return Path(chosen).resolve() if chosen else Path(experiment).resolve().parent / ".orch"


def load_param_sets(paths: list[str], overrides: list[str]) -> list[ParamSet]:
    if not paths:
        if overrides:
            from .errors import ParamsError

            raise ParamsError("--set needs a parameter file to override; pass --params FILE")
        return [ParamSet("default", {}, "<none>")]
    return load_params(paths, overrides)


def build_graph(module, param_sets: list[ParamSet]) -> Graph:
    """Call run(record) once per parameter set (and aggregate(records) once) to wire the DAG."""
    graph = Graph(param_sets)
    records = []
    for pset in param_sets:
        record = graph.new_record(pset)
        _call_user(module.run, record, f"run(record) for parameter set {pset.name!r}", module)
        records.append(record)
    agg = getattr(module, "aggregate", None)
    if callable(agg) and not isinstance(agg, Stage):
        _call_user(agg, records, "aggregate(records)", module)
    return graph


def _call_user(fn, arg, what: str, module) -> None:
    try:
        fn(arg)
    except OrchError:
        raise
    except Exception as e:
        raise ExperimentError(f"{what} in {module.__file__} raised while planning:\n"
                              f"{user_traceback(e, header=False).rstrip()}") from e


def make_context(root: Path, store, project_root: Path, graph: Graph, overwrite: bool, overwrite_stages: list[str]):
    from .hashing import Fingerprinter
    from .core.plan import PlanContext, forced_nodes

    orch_pkg = Path(__file__).resolve().parent
    fingerprinter = Fingerprinter(project_root, exclude=[orch_pkg], cache_path=root / "fingerprints.json")
    return PlanContext(store=store, fingerprinter=fingerprinter,
                       project_root=project_root, overwrite=overwrite,
                       forced=forced_nodes(graph, overwrite_stages))


@dataclass
class RunResult:
    run_id: str | None
    outcomes: list
    decisions: list
    graph: Graph
    seconds: float
    cache: Path

    @property
    def failed(self) -> list:
        return [o for o in self.outcomes if o.status == "failed"]

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return c


def run(opts: RunOptions, on_done: Callable = lambda o: None, launch=None) -> RunResult:
    """The run as a single process, or as rank 0 of an MPI / torchrun launch (`launch`, see
    orchestrator.launch): the other ranks are in `serve` and are released whatever happens here."""
    leader = _open_leader(opts, launch) if launch is not None and launch.kind != "local" else None
    code = 1
    try:
        result = _run(opts, on_done, leader)
        code = 1 if result.failed else 0
        return result
    finally:
        if leader is not None:
            leader.close(code)


def serve(opts: RunOptions, launch) -> int:
    """Ranks other than 0: execute what rank 0 sends until it is done; returns the exit code."""
    if launch.kind == "mpi":  # the cache and the experiment come from rank 0 (WorkerConfig)
        from .executors.mpi import serve as serve_mpi

        return serve_mpi(launch.comm)
    from .executors.base import WorkerConfig
    from .executors.torchrun import Channel, channel_dir, follow

    experiment = Path(opts.experiment).resolve()
    config = WorkerConfig(str(cache_root(experiment, opts.cache)), str(experiment))
    channel = Channel(channel_dir(Path(config.store_root), experiment, opts.argv), launch.rank, launch.size)
    return follow(channel, config)


def _open_leader(opts: RunOptions, launch):
    """Rank 0's executor, made first thing so that the other ranks hear from it even if loading or
    planning fails (they get rank 0's exit code instead of waiting forever)."""
    from .executors.base import WorkerConfig

    experiment = Path(opts.experiment).resolve()
    root = cache_root(experiment, opts.cache)
    if launch.kind == "mpi":
        from .executors.mpi import MPIExecutor

        leader = MPIExecutor(launch.comm)
        leader.configure(WorkerConfig(str(root), str(experiment)))  # workers import the experiment meanwhile
        return leader
    from .executors.torchrun import Channel, TorchrunLeader, channel_dir

    channel = Channel(channel_dir(root, experiment, opts.argv), launch.rank, launch.size)
    channel.open()
    return TorchrunLeader(channel)


def _executor(opts: RunOptions, leader, store, root: Path, experiment: Path):
    from .executors.base import InProcessExecutor, PoolExecutor, WorkerConfig

    if leader is not None:
        from .executors.torchrun import TorchrunLeader

        if isinstance(leader, TorchrunLeader):
            leader.configure(store)  # it runs nodes itself, in this process
        return leader
    if opts.parallel > 1:
        return PoolExecutor(opts.parallel, WorkerConfig(str(root), str(experiment)))
    return InProcessExecutor(store)


def _run(opts: RunOptions, on_done: Callable, leader) -> RunResult:
    from .core.experiment import load_experiment
    from .core.plan import plan
    from .core.runner import NodeOutcome, Runner
    from .runs.manifest import RunLog, node_record
    from .store import DiskStore

    t0 = time.perf_counter()
    experiment = Path(opts.experiment).resolve()
    param_sets = load_param_sets(opts.params, opts.overrides)
    module = load_experiment(experiment)
    graph = build_graph(module, param_sets)
    root = cache_root(experiment, opts.cache)
    store = DiskStore(root)
    ctx = make_context(root, store, experiment.parent, graph, opts.overwrite, opts.overwrite_stages)
    decisions = plan(graph, ctx)
    ctx.fingerprinter.save()
    if opts.dry:
        outcomes = [NodeOutcome(n, status=d.state, key=d.key, reason=d.reason) for n, d in zip(graph.nodes, decisions)]
        return RunResult(None, outcomes, decisions, graph, time.perf_counter() - t0, root)
    log = RunLog(root, str(experiment), {p.name: p.values for p in param_sets}, opts.argv)
    executor = _executor(opts, leader, store, root, experiment)
    runner = Runner(graph, ctx, decisions, executor, on_done, log.log_dir)
    try:
        outcomes = runner.run()
    except KeyboardInterrupt:  # Ctrl-C: what finished is stored; say so in the run record
        log.finish("interrupted", [node_record(o) for o in runner.outcomes], {})
        _leave_report(log)
        raise
    finally:
        if executor is not leader:  # the leader is closed by run(), with the exit code
            executor.close()
    result = RunResult(log.run_id, outcomes, decisions, graph, time.perf_counter() - t0, root)
    status = "failed" if result.failed else "ok"
    log.finish(status, [node_record(o) for o in outcomes], result.counts())
    _leave_report(log)
    return result


def _leave_report(log) -> None:
    """runs/<id>/report.html next to the manifest; if it cannot be written the run still stands (warning)."""
    import logging

    from .errors import ReportError
    from .runs.report import write_report

    try:
        write_report(log.manifest, log.dir / "report.html")
    except ReportError as e:
        logging.getLogger(__name__).warning("%s", e)

