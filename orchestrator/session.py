"""One `orch run`: parameters -> graph -> plan -> run -> manifest. The CLI is a thin shell over this;
ARCHITECTURE.md follows one run through it."""

from __future__ import annotations

import os
import time

from . import gcpolicy
from .core.graph import Graph
from .core.status import RUN_DETACHED, RUN_FAILED, RUN_INTERRUPTED, RUN_OK, Status
from .errors import ParamsError
from .executors.launch import Launch
from .hashing import sha
from .params import ParamSet, load_params

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Callable

    from .core.plan import Decision, PlanContext
    from .parsecache import ParsedTexts
    from .runs.progress import ProgressOptions
    from .store import DiskStore


# RunOptions, RunResult and Planned are plain classes, not dataclasses: defining a dataclass costs
# 2-3 M instructions (its methods are generated and compiled at import), on every run.


class RunOptions:
    """What a run was asked for (the `orch run` options)."""

    def __init__(self, experiment: str | os.PathLike, params: list[str] | None = None,
                 overrides: list[str] | None = None, cache: str | os.PathLike | None = None,
                 overwrite: bool = False, overwrite_stages: list[str] | None = None,
                 dry: bool = False, parallel: int = 1, argv: list[str] | None = None, slurm: dict | None = None):
        self.experiment = experiment
        self.params = [] if params is None else params
        self.overrides = [] if overrides is None else overrides
        self.cache = cache
        self.overwrite = overwrite
        self.overwrite_stages = [] if overwrite_stages is None else overwrite_stages
        self.dry = dry
        self.parallel = parallel
        self.argv = [] if argv is None else argv
        self.slurm = slurm  # --executor slurm: its --slurm-* options ({} for none); None: local


class RunResult:
    def __init__(self, run_id: str | None, outcomes: list, decisions: list, graph: Graph, seconds: float, cache: str,
                 detached: list[str] | None = None):
        self.run_id = run_id  # None for a dry run (nothing is recorded)
        self.outcomes = outcomes  # core.runner.NodeOutcome, in node order
        self.decisions = decisions  # core.plan.Decision, in node order
        self.graph = graph
        self.seconds = seconds
        self.cache = cache
        self.detached = detached  # --detach: the jobs left running (executors.base.Detached)

    @property
    def failed(self) -> list:
        failed = Status.FAILED  # (an enum member looked up once, not per node)
        return [o for o in self.outcomes if o.status == failed]

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes:
            status = o.status
            c[status] = c.get(status, 0) + 1  # Status is a str: JSON and f-strings show "ran"
        return c


def run_experiment(opts: RunOptions, on_done: Callable = lambda o: None, launch: Launch | None = None,
                   progress: ProgressOptions | None = None) -> RunResult:
    """The run as a single process, or as rank 0 of an MPI / torchrun launch (the other ranks are in
    executors.serve and are released by the executor's close, whatever happens here). `progress`:
    how the run shows what is running (runs.progress); None shows nothing."""
    from .executors import WorkerConfig, open_executor
    from .store.location import cache_path

    experiment = os.path.realpath(opts.experiment)  # Path.resolve(), without importing pathlib
    root = cache_path(opts.cache, os.path.dirname(experiment))
    executor = open_executor(launch or Launch(), WorkerConfig(root, experiment), opts.parallel, opts.argv,
                             slurm=opts.slurm)
    code = 1
    try:
        with gcpolicy.frozen():
            result = _plan_and_run(opts, experiment, root, executor, on_done, progress)
        code = 1 if result.failed else 0
        return result
    except KeyboardInterrupt as e:  # the executor stops its workers rather than wait for their nodes
        from .interrupts import exit_code

        code = exit_code(e)
        raise
    finally:
        executor.close(code)


def serve_rank(opts: RunOptions, launch: Launch) -> int:
    """Ranks other than 0: run what rank 0 hands out; returns the exit code."""
    from .executors import WorkerConfig, serve
    from .store.location import cache_path

    experiment = os.path.realpath(opts.experiment)
    return serve(launch, WorkerConfig(cache_path(opts.cache, os.path.dirname(experiment)), experiment), opts.argv)


def load_param_sets(paths: list[str], overrides: list[str], yaml_cache: ParsedTexts | None = None) -> list[ParamSet]:
    """The parameter sets of a run; through `yaml_cache` (the cache directory's yaml-cache.json),
    YAML texts parsed before are not parsed again (parsecache: a cached run need not import PyYAML)."""
    if not paths:
        if overrides:
            raise ParamsError("--set needs a parameter file to override; pass --params FILE")
        return [ParamSet("default", {}, "<none>")]
    return load_params(paths, overrides, yaml_cache)


def project_code(experiment: str, toml: ParsedTexts | None = None):
    """The experiment's code roots (hashing.coderoots; `toml`: pyproject.toml texts parsed before),
    and from now on its modules are imported so that they run the source orch hashes (core.pycache).
    Before the experiment is imported."""
    from .core.pycache import install
    from .hashing import ORCH_PACKAGE_DIR
    from .hashing.coderoots import discover

    roots = discover(os.path.dirname(experiment), ORCH_PACKAGE_DIR, toml)
    install(roots)
    return roots


def plan_context(root: str | os.PathLike, store, project_root: str | os.PathLike, graph: Graph, overwrite: bool,
                 overwrite_stages: list[str], code_roots=None):
    from .core.plan import PlanContext, forced_nodes
    from .hashing import ORCH_PACKAGE_DIR, Fingerprinter
    from .hashing.coderoots import discover

    roots = code_roots if code_roots is not None else discover(project_root, ORCH_PACKAGE_DIR)
    fingerprinter = Fingerprinter(roots, cache_path=os.path.join(root, "fingerprints.json"))
    return PlanContext(store=store, fingerprinter=fingerprinter, project_root=project_root, overwrite=overwrite,
                       forced=forced_nodes(graph, overwrite_stages))


class Planned:
    """An experiment loaded and planned: what a run, a dry run and `orch accept` start from."""

    def __init__(self, param_sets: list[ParamSet], graph: Graph, store: DiskStore, ctx: PlanContext,
                 decisions: list[Decision], parsed: tuple[ParsedTexts, ...] = ()):
        self.param_sets, self.graph, self.store, self.ctx, self.decisions = param_sets, graph, store, ctx, decisions
        self.parsed = parsed  # texts parsed through the cache (parsecache): saved once the cache directory exists


def plan_experiment(opts: RunOptions, experiment: str | os.PathLike, root: str | os.PathLike) -> Planned:
    from .core.experiment import build_graph, load_experiment
    from .core.plan import plan, signature_hints
    from .parsecache import toml_texts, yaml_texts
    from .resources import check_stage_names
    from .store import DiskStore

    experiment, root = os.fspath(experiment), os.fspath(root)  # (absolute: realpath, cache_path)
    yaml_cache = yaml_texts(os.path.join(root, "yaml-cache.json")) if opts.params else None
    param_sets = load_param_sets(opts.params, opts.overrides, yaml_cache)
    toml_cache = toml_texts(os.path.join(root, "toml-cache.json"))
    roots = project_code(experiment, toml_cache)
    parsed = (toml_cache,) if yaml_cache is None else (yaml_cache, toml_cache)
    for cache in parsed:
        cache.save()  # not before the cache directory exists: a first run saves them once it made it (_plan_and_run)
    with gcpolicy.relaxed():  # user code: the collector stays on, collecting less often
        graph = build_graph(load_experiment(experiment), param_sets)
    check_stage_names(param_sets, {n.stage.name for n in graph.nodes})  # parameter files' orch.resources
    with gcpolicy.paused():  # planning builds the run's long-lived structures (gcpolicy)
        store = DiskStore(root, write=False)  # a read-only cache can still plan (and serve a cached run)
        store.use_entry_index(sha.new(experiment.encode()).hexdigest()[:32])  # store.entryindex
        ctx = plan_context(root, store, os.path.dirname(experiment), graph, opts.overwrite, opts.overwrite_stages, roots)
        ctx.signatures.update(store.planning_hints())
        decisions = plan(graph, ctx)
        ctx.fingerprinter.save()
        store.save_entry_index(signature_hints(graph, ctx))
        gcpolicy.settle()  # before the collector is back: it would traverse all of this at once
    return Planned(param_sets, graph, store, ctx, decisions, parsed)


def accept_code(opts: RunOptions, stage: str, param_set: str | None, dry: bool) -> list:
    """`orch accept`: re-key the entries of `stage` to its current code (core.accept)."""
    from .core.accept import accept
    from .store.location import cache_path

    experiment = os.path.realpath(opts.experiment)
    p = plan_experiment(opts, experiment, cache_path(opts.cache, os.path.dirname(experiment)))
    if param_set is not None:  # the exact name or a unique short form (lr=0.1)
        from .runs.paramsets import resolve_param_set

        param_set = resolve_param_set(param_set, [s.name for s in p.param_sets], "this experiment")
    return accept(p.graph, p.ctx, p.decisions, stage, param_set, dry)


def _plan_and_run(opts: RunOptions, experiment: str, root: str, executor, on_done: Callable,
                  progress: ProgressOptions | None = None) -> RunResult:
    from .core.plan import record_code_manifests
    from .core.runner import NodeOutcome, Runner
    from .runs.manifest import ManifestWriter
    from .runs.progress import watch_run

    t0 = time.perf_counter()
    planned = plan_experiment(opts, experiment, root)
    param_sets, graph, store, ctx, decisions = (planned.param_sets, planned.graph, planned.store, planned.ctx,
                                                planned.decisions)
    executor.prepare(graph)
    if opts.dry:
        outcomes = [NodeOutcome(n, status=d.state, key=d.key, reason=d.reason, entry=d.entry)
                    for n, d in zip(graph.nodes, decisions)]
        return RunResult(None, outcomes, decisions, graph, time.perf_counter() - t0, root)
    if store.read_only:
        return _run_read_only(graph, ctx, decisions, executor, on_done, root, t0)
    store.check_locking()
    record_code_manifests(graph, decisions, ctx)
    manifest = ManifestWriter(root, experiment, {p.name: p.values for p in param_sets}, opts.argv)
    for cache in planned.parsed:
        cache.save()  # the cache directory exists now (a first run made it just above)
    executor.run_dir = manifest.dir
    executor.start(store)
    watch = watch_run(progress, graph.nodes, root, executor, on_done)  # starts with the first node that runs
    with gcpolicy.paused():  # its per-node outcomes: tens of thousands of objects the collector would traverse
        runner = Runner(graph, ctx, decisions, watch.executor, watch.on_done, manifest.dir, on_start=watch.on_start)
        gcpolicy.settle()  # they live as long as the run too
    return _run_recorded(runner, watch, manifest, decisions, graph, store, root, t0)


def _run_recorded(runner, watch, manifest, decisions, graph: Graph, store, root: str, t0: float) -> RunResult:
    """Run the loop and record it in its manifest and report, however it ends."""
    from .executors.base import Detached
    from .runs.manifest import node_rows

    try:
        outcomes = runner.run_all()
    except Detached as d:  # --detach: the jobs run on; `orch status` follows them, `orch run` again re-attaches
        result = RunResult(manifest.run_id, runner.outcomes, decisions, graph, time.perf_counter() - t0, root,
                           detached=d.job_ids)
        manifest.finish(RUN_DETACHED, node_rows(runner.outcomes, store), result.counts())
        _save_index(runner, store)
        return result
    except KeyboardInterrupt:  # Ctrl-C: what finished is stored; say so in the run's manifest
        manifest.finish(RUN_INTERRUPTED, node_rows(runner.outcomes, store), {})
        _leave_report(manifest)
        _save_index(runner, store)
        raise
    except BaseException:  # orch itself failed mid-run: the record says the run failed, not "running"
        manifest.finish(RUN_FAILED, node_rows(runner.outcomes, store), {})
        _save_index(runner, store)
        raise
    finally:
        watch.close()
    result = RunResult(manifest.run_id, outcomes, decisions, graph, time.perf_counter() - t0, root)
    with gcpolicy.paused():  # the rows and the report: orch's own bookkeeping (gcpolicy)
        manifest.finish(RUN_FAILED if result.failed else RUN_OK, node_rows(outcomes, store), result.counts())
        _leave_report(manifest)
        manifest.data = None  # its rows are freed now: the collector, back on, would traverse them all at once
        _save_index(runner, store)
    return result


def _save_index(runner, store) -> None:
    """The entries the run wrote, into the entry index (store.entryindex), after its manifest: the
    index only saves time, so failing to write it is a warning, never the run's error (nor one that
    hides the error the run is ending with)."""
    try:
        runner.learn_written()
        store.save_entry_index(runner.index_hints())
    except Exception as e:  # (OSError is dealt with inside; this is MemoryError and the like)
        import logging

        logging.getLogger(__name__).warning("the entry index of %s was not saved: %s: %s", store.root,
                                            type(e).__name__, e)


def _run_read_only(graph: Graph, ctx, decisions, executor, on_done: Callable, root: str, t0: float) -> RunResult:
    """A run against a cache this user cannot write (a read-only mount, another team's archive):
    reading is fine, so a run that finds every stored result serves it from the cache, unrecorded
    (no manifest: recording needs write). A node that would have to store something is refused
    before anything runs, rather than computed and thrown away."""
    import logging

    from .core.runner import Runner
    from .errors import ReadOnlyCacheError

    must_store = [n for n, d in zip(graph.nodes, decisions) if d.state != Status.CACHED and n.stage.cached]
    if must_store:
        shown = ", ".join(n.label for n in must_store[:5]) + (f" and {len(must_store) - 5} more" if len(must_store) > 5 else "")
        raise ReadOnlyCacheError(
            f"the cache {root} is read-only for you and {len(must_store)} node(s) must run and store their "
            f"results: {shown}; make it writable, or run with a writable cache (--cache DIR / ORCH_CACHE); "
            "`orch run --dry` shows what would run")
    logging.getLogger(__name__).warning("the cache %s is read-only for you: every result comes from it, and this run "
                                        "is not recorded (orch runs/show will not list it)", root)
    executor.start(ctx.store)
    outcomes = Runner(graph, ctx, decisions, executor, on_done, None).run_all()
    return RunResult(None, outcomes, decisions, graph, time.perf_counter() - t0, root)


def _leave_report(manifest) -> None:
    """runs/<id>/report.html next to the manifest; if it cannot be written the run still stands (warning)."""
    from .errors import ReportError
    from .runs.report import write_report

    try:
        write_report(manifest.data, f"{manifest.dir}/report.html")
    except ReportError as e:
        import logging

        logging.getLogger(__name__).warning("%s", e)
