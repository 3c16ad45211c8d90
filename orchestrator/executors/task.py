"""Executing one node: the part that runs wherever the executor puts it (this process, a pool
worker, an MPI rank, a torchrun rank). It takes the node lock, re-checks the store (another process
may have computed the node meanwhile), calls the stage function with its inputs, saves the outputs
through their cachers into the store and writes the entry. Everything it needs travels in a
picklable Task; everything it learns comes back in a TaskResult.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..cachers import Cacher, JsonCacher, LazyArtifact, OutputTarget, PickleCacher
from ..core import keys
from ..core.status import Status
from ..core.traced import current_hash
from ..errors import ArtifactLoadError, DamagedObjectError, OrchError, StageOutputError, user_traceback
from ..fsutil import rmtree_force
from ..hashing import hash_bytes, hash_value
from ..hashing.coderoots import CodeRoots
from ..params import MISSING, resolve, traced_value
from ..record import Record, current_record
from ..store import Entry, KeyComponents, Read, Store, StoredOutput
from ..store.failures import is_write_failure, write_error

_BYTES_CACHERS = (PickleCacher, JsonCacher)  # exactly these: a subclass may write elsewhere


@dataclass(slots=True)
class InputValue:
    """One input of a task: an in-memory value, or a stored object to load (or hand over lazily)."""

    name: str
    set_name: str | None  # aggregates: the parameter set this value belongs to
    lazy: bool
    producer: int  # node id, so a damaged object can be traced to what recomputes it
    value: Any = None
    in_memory: bool = False
    stored: StoredOutput | None = None
    cacher: Cacher | None = None  # the producer's cacher, which loads `stored`


@dataclass
class Task:
    node_id: int
    stage_ref: tuple[str, str]  # (module, qualname): workers re-import the stage
    label: str
    set_name: str
    params: dict
    key: str | None
    components: KeyComponents | None
    inputs: list[InputValue]
    project_root: str
    param_sets: dict = field(default_factory=dict)
    hash_memory_outputs: bool = False
    log_path: str | None = None
    force: bool = False  # --overwrite/--overwrite-stage/damaged: never accept an existing entry
    # The lock's name (core.lockscope): the key plus the parameter values the stage visibly reads,
    # so sweep points sharing a key run at once and one computation still runs once.
    lock_scope: str | None = None
    # Other processes (pool workers, MPI ranks) send back only what the coordinator cannot read
    # from the store: in-memory outputs, never stored arrays.
    return_cached_values: bool = True
    # False on torchrun ranks other than 0: run the stage function in step with rank 0, store nothing.
    save: bool = True
    # What is project code (hashing.coderoots): run_external traces the project modules a script imports.
    code_roots: CodeRoots | None = None
    # A partial aggregate: {parameter set: why its inputs are missing} (record.failed_sets).
    failed_sets: dict[str, str] = field(default_factory=dict)
    # The node's metrics stream (orchestrator.metrics) in the run directory; None keeps what the
    # stage logs in memory (record.logged), still summarized into the entry.
    metrics_path: str | None = None


@dataclass
class TaskResult:
    node_id: int
    status: Status  # RAN, CACHED (computed meanwhile by another process), FAILED or DAMAGED
    entry: Entry | None = None  # the entry written (RAN) or found (CACHED); None for uncached stages
    outputs: dict[str, StoredOutput] = field(default_factory=dict)  # what was stored, entry or not
    reads: dict[str, Read] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # in-memory outputs for consumers in this run
    hashes: dict[str, str | None] = field(default_factory=dict)  # content hash of every output
    duration: float = 0.0
    error: str = ""
    error_type: str = ""
    traceback: str = ""
    damaged_producer: int | None = None
    log_path: str | None = None  # a failure: the node's log, which holds its traceback
    metrics: dict[str, dict] | None = None  # what it logged and its JSON outputs' numbers (summarized)
    # Whether the node's metrics stream was there when the task read it after the stage (None: not read)
    stream: bool | None = None
    # What the planning's entry index needs to keep the entry written (Store.put_entry_and_head returns it:
    # its file's stat signature). Made where it was written: a worker on another host (Slurm, MPI) may see
    # another st_dev for the same shared file, and then it never matches (the entry is read, as without it).
    index_record: tuple | None = None


def import_stage(ref: tuple[str, str]):
    module, qualname = ref
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def execute(task: Task, store: Store, stage=None, gate=None) -> TaskResult:
    """Run one node and store its outputs; never raises for a stage failure (returns it).

    A `gate` (torchrun rank 0: executors.torchrun.TorchrunLeader) hears `begin(task)` inside the lock, after the re-check and loading
    the inputs, and `end(task, failure)` after the call, where failure is this process's failed
    result or None; a result it returns replaces ours (the failure as seen from every rank), and
    nothing is saved unless every rank succeeded."""
    stage = stage if stage is not None else import_stage(task.stage_ref)
    start = time.perf_counter()
    cacheable = stage.cached and task.key is not None and task.save
    lock = store.lock(task.lock_scope or task.key) if cacheable else None
    if lock is not None:
        lock.acquire()
    try:
        if cacheable and not task.force:
            entry = _recheck(task, store, stage)
            if entry is not None:
                return TaskResult(task.node_id, Status.CACHED, entry=entry, outputs=entry.outputs,
                                  reads=entry.reads, duration=time.perf_counter() - start)
        return _compute(task, store, stage, gate)
    finally:
        if lock is not None:
            lock.release()


#: Read signatures the re-check remembers per store (Store.read_signatures), at most.
_SIGNATURES_KEPT = 10_000


def _recheck(task: Task, store: Store, stage) -> Entry | None:
    """Inside the lock: did another process store this node while we waited?

    An entry is named by its trace id, "<signature>-<hash of the values read>": once a signature's
    reads are known, the name of an entry that holds now is known too, and an entry of that
    signature with another name recorded some other value, so it cannot hold and is not read (a
    sweep point's re-check would otherwise read every other point's entry). Entries with an ignored
    read are always read: check_trace skips such reads, their names do not."""
    stat_cache = store.stat_cache()
    ignore = stage.ignore

    def file_hash(name: str) -> str | None:  # only for an entry that tracked files
        return current_hash(name, task.project_root, stat_cache)

    def read_hash(path: str) -> str:
        return keys.read_value_hash(traced_value(task.params, path, ignore))

    holding: dict[str, str | None] = {}  # signature -> the trace id an entry of it that holds has
    entries = []
    signatures = store.read_signatures
    for tid in store.trace_ids(task.key):
        sig = keys.signature_of(tid)
        known = signatures.get(sig)
        if known is not None:
            if sig not in holding:
                reads, files = known
                holding[sig] = (keys.holding_trace_id(reads, files, read_hash, file_hash)
                                if keys.names_tell(sig, reads, files, ignore) else None)
            if holding[sig] is not None and holding[sig] != tid:
                continue
        entry = store.get_entry(task.key, tid, label=task.label)
        if entry is None or entry.outputs.keys() != stage.output_names:  # damaged: planning warned (core.plan)
            continue
        if known is None and len(signatures) < _SIGNATURES_KEPT:
            reads, files = tuple(entry.reads), tuple(entry.files)
            if keys.trace_signature(reads, files) == sig:  # a name that does not match its content teaches nothing
                signatures[sig] = (reads, files)
        entries.append(entry)
    entries.sort(key=lambda e: e.created, reverse=True)
    for entry in entries:
        if (keys.check_trace(entry, ignore, read_hash, lambda p: resolve(task.params, p), file_hash) is None
                and not store.missing_outputs(entry)):
            return entry
    return None


def _compute(task: Task, store: Store, stage, gate) -> TaskResult:
    staging = store._staging_name(prefix=stage.name)  # created only if the stage asks for it
    record = None
    try:
        try:
            kwargs = _load_inputs(task, store)
        except _DamagedInput as e:
            return TaskResult(task.node_id, Status.DAMAGED, error=str(e.error), damaged_producer=e.producer)
        except ArtifactLoadError as e:
            return _failure(task, e, 0.0)

        def checkpoints() -> str:  # a hash of every parameter: made only when asked for or when one may exist
            return store._checkpoint_name(keys.checkpoint_dir_name(task.key, task.stage_ref, task.set_name, task.params))

        record = Record(task.params, task.set_name, staging_dir=staging, project_root=task.project_root,
                        ignore=stage.ignore, param_sets=task.param_sets, log_path=task.log_path,
                        checkpoint_root=checkpoints, code_roots=task.code_roots, failed_sets=task.failed_sets,
                        metrics_path=_fresh_stream(task))
        record.stat_cache = store.stat_cache()
        if gate is not None:
            gate.begin(task)
        t0 = time.perf_counter()
        token = current_record.set(record)
        try:
            result = stage.fn(record, **kwargs)
        except (Exception, SystemExit) as e:  # the stage's own failure: reported, never fatal to the run
            failure = _failure(task, e, time.perf_counter() - t0)
            return (gate.end(task, failure) if gate is not None else None) or failure
        finally:
            current_record.reset(token)
        fn_time = time.perf_counter() - t0
        del kwargs
        if gate is not None:
            failed_elsewhere = gate.end(task, None)
            if failed_elsewhere is not None:
                return failed_elsewhere
        if not task.save:
            return TaskResult(task.node_id, Status.RAN, duration=fn_time)
        try:
            values = _split_outputs(stage, result)
            outputs = _save_outputs(stage, values, staging, store, record, task.label)
        except OrchError as e:
            return _failure(task, e, fn_time)
        if record.stat_cache is not None:
            record.stat_cache.save()
        res = TaskResult(task.node_id, Status.RAN, outputs=outputs, reads=_reads(record), duration=fn_time)
        res.metrics, res.stream = _metrics(stage, values, record)
        if task.hash_memory_outputs:
            res.hashes = {o.name: _memory_hash(values[o.name]) for o in stage.outputs if o.cacher is None}
        res.hashes.update({name: out.object.hash for name, out in outputs.items()})
        for spec in stage.outputs:  # Lazy: saved, memory freed now; consumers load what is stored
            if spec.lazy or (spec.cacher is not None and not spec.cacher.keep_in_memory(values.get(spec.name))):
                values.pop(spec.name, None)
            elif spec.cacher is not None and not task.return_cached_values:
                values.pop(spec.name, None)
        res.values = values
        if stage.cached and task.key is not None:
            what = f"stage {task.label}: its metrics stream"
            try:
                series = _store_series(record, staging, store) if res.metrics else None
                what = f"stage {task.label}: its cache entry"
                res.entry, res.index_record = _write_entry(task, store, record, res.reads, outputs, fn_time,
                                                           res.metrics, series)
            except OSError as e:  # a full or read-only cache: this node fails, what finished stays stored
                if not is_write_failure(e):
                    raise
                return _failure(task, write_error(e, what, _root(store)), fn_time)
        if _may_have_checkpoints(store):  # the outputs are stored: its checkpoints are done with
            rmtree_force(checkpoints(), missing_ok=True)
        return res
    finally:
        if record is not None and (record.staging_used or not _in_memory_cachers(stage)):
            rmtree_force(staging, missing_ok=True)


def _may_have_checkpoints(store: Store) -> bool:
    """Whether the checkpoint directory of the node being run may exist: not while the directory
    all of them live in does not (a node's checkpoint directory is made only under its lock, held now).
    Once seen to exist, the store remembers it (Store.checkpoints_seen) and the node's is looked for."""
    if not store.checkpoints_seen:
        store.checkpoints_seen = os.path.lexists(store._checkpoint_root())
    return store.checkpoints_seen


def _in_memory_cachers(stage) -> bool:
    """Whether every output's cacher is a built-in one that never touches the staging directory
    (its bytes, or a file beside it): with a Record that never gave it out, nothing made it."""
    return all(spec.cacher is None or type(spec.cacher) in _BYTES_CACHERS for spec in stage.outputs)


def _fresh_stream(task: Task) -> str | None:
    """The metrics stream the stage writes: emptied first (a re-run after damage starts it anew);
    /dev/null on torchrun ranks that store nothing."""
    if not task.save:
        return os.devnull
    if task.metrics_path:
        try:
            os.unlink(task.metrics_path)
        except FileNotFoundError:
            pass
    return task.metrics_path


def _metrics(stage, values: dict[str, Any], record: Record) -> tuple[dict[str, dict] | None, bool | None]:
    """The node's metrics summary: the numbers of its JSON outputs, then what it logged (a logged
    series wins over an output number of the same name); and whether its stream file exists (None:
    unknown, it could not be read)."""
    summary = {}
    for spec in stage.outputs:
        if isinstance(spec.cacher, JsonCacher):
            for name, value in metrics.final_metrics(values.get(spec.name)).items():
                summary[name] = metrics.summary_of_value(value)
    stream = None
    if record.metrics_path is not None:
        try:
            data = metrics.read_stream(record.metrics_path)
        except OSError:
            data = None  # unreadable: no series, as metrics.read_series says
        else:
            stream = data is not None
        series = metrics.read_lines(data.splitlines()) if data else {}
    else:
        series = metrics.read_lines(json.dumps(line).encode() for line in record.logged)
    summary.update(metrics.summarize(series))
    return summary or None, stream


def _store_series(record: Record, staging: str, store: Store):
    """The stream stored as an object (a copy: the run directory keeps its own for the report)."""
    import shutil

    if record.metrics_path is None or not os.path.isfile(record.metrics_path):
        return None
    copy = f"{staging}.metrics.jsonl"
    shutil.copyfile(record.metrics_path, copy)
    return store.ingest(copy, ".jsonl")


def _load_inputs(task: Task, store: Store) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for inp in task.inputs:
        if inp.in_memory:
            value = inp.value
        else:
            try:
                path = store.object_path(inp.stored.object, verify=True)
            except DamagedObjectError as e:
                raise _DamagedInput(inp.producer, e) from e
            value = (LazyArtifact(inp.name, str(path), inp.cacher, inp.stored.metadata) if inp.lazy
                     else _load_value(task, inp, str(path)))
        if inp.set_name is None:
            kwargs[inp.name] = value
        else:
            kwargs.setdefault(inp.name, {})[inp.set_name] = value
    return kwargs


def _load_value(task: Task, inp: InputValue, path: str) -> Any:
    """cacher.load of a stored input; a referenced file that changed is damage (its producer
    re-runs), any other failure is this node's, named, never a crash of the run."""
    try:
        return inp.cacher.load(path, inp.stored.metadata)
    except DamagedObjectError as e:
        raise _DamagedInput(inp.producer, e) from e
    except OrchError:
        raise
    except Exception as e:
        raise ArtifactLoadError(
            f"stage {task.label}: input {inp.name!r} ({path}) cannot be loaded by {inp.cacher!r}: "
            f"{type(e).__name__}: {e}; if the producing stage's output format changed, re-run it "
            f"(--overwrite-stage)"
        ) from e


class _DamagedInput(Exception):
    def __init__(self, producer: int, error: DamagedObjectError):
        super().__init__(str(error))
        self.producer, self.error = producer, error


def _split_outputs(stage, result) -> dict[str, Any]:
    n = len(stage.outputs)
    if n == 0:
        return {}
    if n == 1:
        return {stage.outputs[0].name: result}
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = f"a {type(result).__name__} of length {len(result)}" if isinstance(result, (tuple, list)) else type(result).__name__
        raise StageOutputError(
            f"stage {stage.name} ({stage.fn.__code__.co_filename}) declares {n} outputs "
            f"{[o.name for o in stage.outputs]} but returned {got}; return a tuple of {n} values"
        )
    return {o.name: v for o, v in zip(stage.outputs, result)}


def _save_outputs(stage, values: dict[str, Any], staging: str, store: Store,
                  record: Record | None = None, label: str = "") -> dict[str, StoredOutput]:
    """Two phases, so that a bad output leaves nothing in the store: every cacher first prepares its
    file or directory next to the staging area (a failure names the stage and artifact and removes
    what was prepared), then all are ingested."""
    prepared: list = []  # (spec, path or bytes (cachers.Cacher.prepare_in_memory), ext, metadata)
    try:
        _prepare_outputs(stage, values, staging, record, prepared, label or stage.name)
    except BaseException:
        _remove_prepared(prepared, staging)
        raise
    saved = {}
    for i, (spec, path, ext, metadata) in enumerate(prepared):
        try:
            info = store.ingest_bytes(path, ext) if type(path) is bytes else store.ingest(path, ext)
        except OSError as e:  # ingest stages and renames: nothing partial is left in objects/
            _remove_prepared(prepared[i:], staging)
            if not is_write_failure(e):
                raise
            raise write_error(e, f"stage {label or stage.name}: output {spec.name!r}", _root(store),
                              path if type(path) is str else None) from e
        saved[spec.name] = StoredOutput(info, spec.cacher.identity(), metadata)
    return saved


def _remove_prepared(prepared: list, staging: str) -> None:
    """Remove the staging files of outputs not stored (a stage's own files are left alone)."""
    for _, path, _, _ in prepared:
        if type(path) is str and path.startswith(f"{staging}.out."):
            rmtree_force(path, missing_ok=True)


def _root(store: Store) -> str:
    """The cache directory, for messages (the in-memory store has none)."""
    return str(getattr(store, "root", "the cache"))


def _prepare_outputs(stage, values: dict[str, Any], staging: str, record, prepared: list, label: str) -> None:
    used: dict[str, str] = {}  # path -> output name: two outputs must not be one file
    resolved = False  # every path so far is a cacher's own fresh staging path (out_path): no realpath needed
    for spec in stage.outputs:
        if spec.cacher is None:
            continue
        out_path = f"{staging}.out.{_safe_name(spec.name)}{spec.cacher.extension}"
        target = OutputTarget(stage.name, spec.name, out_path, staging, record)
        try:
            path, ext, metadata = spec.cacher.prepare_in_memory(values[spec.name], target)
            if metadata is not None:
                json.dumps(metadata, allow_nan=True)
        except OrchError:
            rmtree_force(out_path, missing_ok=True)
            raise
        except OSError as e:
            rmtree_force(out_path, missing_ok=True)
            if not is_write_failure(e):
                raise _unsavable(stage, spec, values, e) from e
            raise write_error(e, f"stage {label}: output {spec.name!r}", os.path.dirname(os.path.dirname(staging)),
                              out_path) from e
        except Exception as e:
            rmtree_force(out_path, missing_ok=True)
            raise _unsavable(stage, spec, values, e) from e
        if type(path) is bytes:  # no file: nothing to collide with
            prepared.append((spec, path, ext, metadata))
            continue
        if path != out_path and not resolved:  # a file of the stage's own (FileReferenceCacher): compare real paths
            resolved = True
            used = {os.path.realpath(p): name for p, name in used.items()}
        real = os.path.realpath(path) if resolved else path
        if real in used:
            raise StageOutputError(f"stage {stage.name}: outputs {used[real]!r} and {spec.name!r} are the same path "
                                   f"{path}; return each file once")
        used[real] = spec.name
        prepared.append((spec, path, ext, metadata))


def _unsavable(stage, spec, values: dict[str, Any], e: BaseException) -> StageOutputError:
    return StageOutputError(
        f"stage {stage.name}: output {spec.name!r} ({type(values[spec.name]).__name__}) cannot be saved by "
        f"{spec.cacher!r}: {type(e).__name__}: {e}; make it savable or choose another cacher")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _memory_hash(value: Any) -> str | None:
    """Content hash of an in-memory output, so consumers can be cached (early cutoff works too)."""
    from ..artifacts import canonical

    try:
        return "mem:" + hash_bytes(canonical.dumps(value, protocol=5))
    except canonical.PICKLING_ERRORS:
        return None


def _reads(record: Record) -> dict[str, Read]:
    return {path: Read(keys.read_value_hash(value), _shown(value)) for path, value in record.reads.items()}


def _shown(value: Any) -> Any:
    """A read value as JSON for people (manifest, report, `orch why`); a repr where JSON has none."""
    if value is MISSING:
        return "<missing>"
    try:
        hash_value(value)
    except TypeError:
        return repr(value)
    return value if not isinstance(value, (tuple, set, frozenset, bytes)) else repr(value)


def _write_entry(task: Task, store: Store, record: Record, reads: dict[str, Read],
                 outputs: dict[str, StoredOutput], fn_time: float, metrics=None, series=None) -> tuple[Entry, tuple | None]:
    """The node's entry, stored with its head, and what the entry index needs of it (Store.put_entry_and_head)."""
    entry = Entry(
        key=task.key, trace_id=keys.trace_id({p: r.hash for p, r in reads.items()}, record.files),
        stage=task.stage_ref[0] + ":" + task.stage_ref[1], param_set=task.set_name, created=time.time(),
        components=task.components, reads=reads, files=dict(record.files), outputs=outputs,
        duration_s=round(fn_time, 6), metrics=metrics, series=series,
    )
    return entry, store.put_entry_and_head(entry, keys.head_key(entry.stage, task.set_name))


def _failure(task: Task, exc: BaseException, duration: float) -> TaskResult:
    """The node's failure: its error and the user's traceback, also appended to the node's log (after
    whatever run_external wrote there), whose path the result carries."""
    tb = user_traceback(exc)
    logged = _log_failure(task, tb)
    return TaskResult(task.node_id, Status.FAILED, duration=duration, error=str(exc) or type(exc).__name__,
                      error_type=type(exc).__name__, traceback=tb, log_path=task.log_path if logged else None)


def _log_failure(task: Task, tb: str) -> bool:
    """Append the traceback to the node's log; False if there is none or it cannot be written (the
    failure is still reported and recorded in the manifest)."""
    if not task.log_path:
        return False
    try:
        os.makedirs(os.path.dirname(task.log_path) or ".", exist_ok=True)
        with open(task.log_path, "a", encoding="utf-8", errors="replace") as f:
            f.write(f"--- {task.label} failed ---\n{tb}")
    except OSError:
        return False
    return True
