"""Run manifests: `runs/<run-id>/manifest.json` in the cache directory, and `runs/latest`. The one
place that writes them and reads them back (`orch runs`, `show`, `why --run`, `report`, `get`,
`orchestrator.load`).

The manifest is written once with status "running" when the run starts (so a killed run still
leaves a trace) and once more when it ends; both writes are atomic renames. While it runs, the run
holds an flock on `runs/<id>/alive.lock`; the kernel drops it when the process dies however it dies
(kill -9, the OOM killer, an MPI launcher aborting the job), so readers show a manifest still
"running" whose lock is free as "died". It is plain JSON:
one row per node (`node_row`) with its stage, parameter set, status, key, reason, duration,
inputs, output hashes and what it read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time

from ..core.status import RUN_DIED, RUN_RUNNING, Status
from ..errors import RunNotFoundError
from ..fsutil import atomic_write_bytes, atomic_write_json, read_json_object
from ..store.failures import is_write_failure, write_error
from .manifesthead import FORMAT, read_header

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Iterator

MANIFEST = "manifest.json"
LATEST = "latest"
ALIVE = "alive.lock"


def new_run_id() -> str:
    """Sortable by start time to the millisecond (runs list newest first), unique by a random tail."""
    now = time.time_ns()  # the random tail: os.urandom(n).hex() is secrets.token_hex(n), without importing secrets
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 1_000_000_000)) + f".{_ms(now)}-" + os.urandom(2).hex()


class ManifestWriter:
    """The manifest of the run in progress: written at the start, rewritten at the end."""

    def __init__(self, cache_root: str | os.PathLike, experiment: str, param_sets: dict, argv: list[str] | None = None):
        self.run_id = new_run_id()
        # strings, joined by hand (cache_root is absolute): a cached run does not import pathlib
        self.runs_dir = f"{os.fspath(cache_root)}/runs"
        self.dir = f"{self.runs_dir}/{self.run_id}"
        self.log_dir = f"{self.dir}/logs"
        with self._writing("recording the start of run"):
            os.makedirs(self.log_dir)
        self.data = {
            "format": FORMAT,  # its rows ("nodes") come last: runs.manifesthead reads what precedes them
            "run_id": self.run_id,
            "experiment": experiment,
            "argv": argv or [],
            "started": _now(),
            "finished": None,
            "status": RUN_RUNNING,
            "param_sets": param_sets,
            "nodes": [],
        }
        self._t0 = time.perf_counter()
        self._alive: int | None = None
        with self._writing("recording the start of run"):
            self._alive = _hold_alive(f"{self.dir}/{ALIVE}")  # before the manifest says "running"
            atomic_write_json(f"{self.dir}/{MANIFEST}", self.data)
            _point_latest(self.runs_dir, self.run_id)

    def finish(self, status: str, nodes: list[dict], summary: dict) -> None:
        self.data.pop("nodes", None)
        self.data.update(finished=_now(), status=status, summary=summary,
                         duration_s=round(time.perf_counter() - self._t0, 4))
        self.data["nodes"] = nodes  # last (FORMAT)
        try:
            with self._writing("recording the end of run"):
                # the rows are plain data made here (no cycles): the encoder skips its per-container
                # check, ~20% of encoding the 4.5 MB of a 10,000-node manifest
                data = json.dumps(self.data, separators=(",", ":"), check_circular=False).encode("utf-8")
                atomic_write_bytes(f"{self.dir}/{MANIFEST}", data)
        finally:
            fd, self._alive = self._alive, None
            if fd is not None:
                os.close(fd)  # after the final manifest: a reader never sees "running" and a free lock

    @contextlib.contextmanager
    def _writing(self, what: str):
        """A full or read-only cache while recording the run: a CacheWriteError naming the run."""
        try:
            yield
        except OSError as e:
            if not is_write_failure(e):
                raise
            raise write_error(e, f"{what} {self.run_id}", os.path.dirname(self.runs_dir), self.dir) from e


def _hold_alive(path: str) -> int | None:
    """An flock held for as long as this run's process lives (the descriptor is closed at finish or
    by the kernel); None where the filesystem has no flock (the store refuses such a cache)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _settled(run_dir: str | os.PathLike, m: dict) -> dict:
    """`m`, with status "died" when it says "running" but its process is gone: its alive.lock can be
    locked. No lock file (a run from before alive.lock, an unreadable one): left as it says."""
    if m.get("status") != RUN_RUNNING or alive_lock_held(run_dir) is not False:
        return m
    return {**m, "status": RUN_DIED}


def alive_lock_held(run_dir: str | os.PathLike) -> bool | None:
    """Whether the run's process holds its alive.lock; None when that cannot be told (no lock file,
    an unreadable one, or a filesystem without flock)."""
    import fcntl

    try:
        fd = os.open(os.path.join(run_dir, ALIVE), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # flock unsupported: we cannot tell
        return None
    finally:
        os.close(fd)
    return False


def in_progress(run_dir: str | os.PathLike, manifest: dict | None = None) -> bool:
    """The run's process still runs: its manifest (its header, read here unless given) says "running"
    and alive.lock is held. An unreadable manifest counts as in progress (whoever asks is about to
    delete something the run may need)."""
    m = manifest if manifest is not None else read_header(os.path.join(run_dir, MANIFEST), wanted=("status",))
    return m is None or _settled(run_dir, m).get("status") == RUN_RUNNING


#: Stored outputs the report shows (runs/images.py): files with these extensions, and directories
#: (which may hold such files). Their paths in the store are in the node's row ("output_paths").
IMAGE_EXTS = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


def node_row(outcome, store=None) -> dict:
    """A node's row in the manifest, from its core.runner.NodeOutcome; with the store, the paths
    of its stored images and directories (for the report)."""
    return node_rows([outcome], store)[0]


def node_rows(outcomes, store=None) -> list[dict]:
    """`node_row` of every outcome, in order. One pass with what a row needs looked up once: a
    10,000-node run builds all its rows in this loop, so the usual shapes (one input, one output, no
    reads, no files, no image) are built without a comprehension (each is a function call in 3.11)."""
    object_path = store.object_path if store is not None else None
    cached, failed = Status.CACHED, Status.FAILED
    rows = []
    append = rows.append
    for o in outcomes:
        node, status, entry, outputs, reads, files = o.node, o.status, o.entry, o.outputs, o.reads, o.files
        stage, duration, inputs = node.stage, o.duration, node.inputs
        edges = []
        for e in inputs:
            edges.append([e.input, e.producer, e.output, e.set_name] if e.set_name else [e.input, e.producer, e.output])
        hashes, paths = {}, None
        for name, out in outputs.items():
            obj = out.object
            hashes[name] = obj.hash
            if object_path is not None and (obj.kind == "dir" or obj.ext.lower() in IMAGE_EXTS):
                if paths is None:
                    paths = {}
                paths[name] = str(object_path(obj, verify=False))
        row = {
            "id": node.id,
            "stage": stage.name,
            "stage_id": stage.id,
            "param_set": node.set_name,
            "status": status,  # a str: JSON writes "ran"
            "key": o.key,
            "reason": o.reason,
            "duration_s": round(duration, 6) if duration else 0,  # an int: JSON writes floats slowly
            "inputs": edges,
            "outputs": hashes,
            "reads": {path: r.shown for path, r in reads.items()} if reads else {},
            "files": dict(files) if files else {},
        }
        if status == failed:
            row["error"] = f"{o.error_type}: {o.error}"
            row["traceback"] = o.traceback
            if o.log_path:
                row["log"] = o.log_path
        if o.skipped_because:
            row["skipped_because"] = o.skipped_because
        if entry is not None:
            row["trace"] = entry.trace_id  # with the key: this node's computation (core.explain)
        if o.metrics:
            row["metrics"] = o.metrics
        if o.series:
            row["series"] = o.series
        if paths:
            row["output_paths"] = paths
        if entry is not None:
            if status == cached:
                row["computed_s"] = entry.duration_s  # what it cost when it ran (compare's durations)
            if entry.accepted:
                row["accepted"] = dict(entry.accepted)
        append(row)
    return rows


# -- reading runs back --------------------------------------------------------------------------------

def resolve_run(cache_root: Path, run: str = "latest") -> Path:
    """The directory of a run: "latest", a run id, or a prefix naming exactly one run. Not found or
    ambiguous: RunNotFoundError listing the most recent candidates and how many more there are."""
    from pathlib import Path

    runs_dir = Path(cache_root) / "runs"
    path = runs_dir / run
    if run == LATEST and path.is_file() and not path.is_symlink():
        path = runs_dir / path.read_text().strip()
    if not (path / MANIFEST).is_file() and run != LATEST:
        matches = [r for r in run_ids(runs_dir) if r.startswith(run)]
        if len(matches) > 1:
            raise RunNotFoundError(f"run {run!r} is ambiguous in {runs_dir}: it begins {len(matches)} run ids: "
                                   f"{_recent(matches)}; give more of the id")
        if matches:
            path = runs_dir / matches[0]
    if not (path / MANIFEST).is_file():
        known = run_ids(runs_dir)
        raise RunNotFoundError(
            f"no run {run!r} in {runs_dir}" + (f"; runs: {_recent(known)}" if known else "; nothing has run yet")
        )
    return path.resolve()


def _recent(run_ids: list[str], shown: int = 10) -> str:
    """The newest `shown` of `run_ids` (oldest first), newest first, and how many older ones there are."""
    text = ", ".join(reversed(run_ids[-shown:]))
    more = len(run_ids) - shown
    return text + (f" and {more} older (orch runs -n {len(run_ids)} lists them all)" if more > 0 else "")


def read_manifest(cache_root: Path, run: str = "latest") -> dict:
    path = resolve_run(cache_root, run) / MANIFEST
    m = read_json_object(path)
    if m is None:
        raise RunNotFoundError(f"the manifest of run {run!r} ({path}) cannot be read")
    from .manifestcheck import problem  # only where a manifest is read back, not in a run that writes one

    wrong = problem(m)
    if wrong is not None:
        raise RunNotFoundError(f"the manifest of run {run!r} ({path}) is damaged: {wrong}")
    return _settled(path.parent, m)


def manifests_newest_first(cache_root: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(run id, manifest) of every run, newest first, read one at a time; unreadable and damaged
    ones (runs.manifestcheck) are skipped."""
    from .manifestcheck import problem

    runs_dir = os.path.join(cache_root, "runs")
    for run_id in reversed(run_ids(runs_dir)):
        run_dir = os.path.join(runs_dir, run_id)
        m = read_json_object(os.path.join(run_dir, MANIFEST))
        if m is not None and problem(m) is None:
            yield run_id, _settled(run_dir, m)


def list_runs(cache_root: Path, limit: int = 20) -> list[dict]:
    """The newest runs first: id, start, status, duration, node counts and the command (argv), from
    their manifests' headers (runs.manifesthead: the rows are not parsed)."""
    from pathlib import Path

    rows = []
    runs_dir = Path(cache_root) / "runs"
    for run_id in reversed(run_ids(runs_dir)):
        m = read_header(runs_dir / run_id / MANIFEST)
        if m is None:
            continue
        rows.append(_run_row(run_id, _settled(runs_dir / run_id, m)))
        if len(rows) == limit:
            break
    return rows


def _run_row(run_id: str, m: dict) -> dict:
    """A run's line in `orch runs`: each field of the header as the listing prints it, or a stand-in
    when a damaged or hand-edited manifest holds something else (the listing goes on)."""
    from .manifestcheck import HEADER

    def field(name: str, default):
        v = m.get(name, default)
        return v if HEADER[name](v) else default

    return {
        "run_id": field("run_id", run_id),
        "started": field("started", ""),
        "status": field("status", "?"),
        "duration_s": field("duration_s", None),
        "param_sets": len(field("param_sets", {})),
        "summary": field("summary", {}),
        "experiment": field("experiment", ""),
        "argv": field("argv", []),
    }


def set_names(manifest: dict) -> list[str]:
    """The parameter sets of a run, in its order (and any a node names that the header does not)."""
    declared = list(manifest.get("param_sets", {}))
    return declared + sorted({n["param_set"] for n in manifest.get("nodes", [])} - set(declared))


def why_rows(manifest: dict, stage: str | None = None, param_set: str | None = None) -> list[dict]:
    """Nodes of a past run that did not come from the cache, with the reason each one ran (and those
    that did only because `orch accept` re-keyed them to new code). `param_set`: its exact name or a
    short form (runs.paramsets)."""
    if param_set is not None:
        from .paramsets import resolve_param_set

        param_set = resolve_param_set(param_set, set_names(manifest), f"run {manifest.get('run_id', '?')}")
    rows = []
    for n in manifest.get("nodes", []):
        if stage and n["stage"] != stage or param_set and n["param_set"] != param_set:
            continue
        if n["status"] == Status.CACHED and not n.get("accepted"):
            continue
        reason = n.get("reason") or ""
        if n["status"] == Status.SKIPPED:
            reason = f"upstream {n.get('skipped_because', '?')} failed"
        elif n["status"] == Status.FAILED:
            reason = f"{reason}; failed: {n.get('error', '')}" if reason else f"failed: {n.get('error', '')}"
        rows.append({"stage": n["stage"], "param_set": n["param_set"], "status": n["status"], "reason": reason})
    return rows


def recent_node_rows(cache_root: str | os.PathLike, runs: int) -> dict[tuple[str, str], dict]:
    """(stage id, parameter set) -> {"key", "trace"} of its node in the newest of the last `runs`
    readable runs that computed or reused it (not a pending row of an interrupted or detached run)."""
    found: dict[tuple[str, str], dict] = {}
    for _, m in itertools.islice(manifests_newest_first(cache_root), runs):
        for n in m.get("nodes", []):
            if isinstance(n, dict) and n.get("key") and n.get("status") in (Status.RAN, Status.CACHED):
                found.setdefault((n.get("stage_id"), n.get("param_set")), {"key": n["key"], "trace": n.get("trace")})
    return found


def run_ids(runs_dir: str | os.PathLike) -> list[str]:
    """Run directories, oldest first (run ids sort by start time); not hidden ones (a record that
    `orch cache gc --keep-runs` is deleting), not symbolic links (`latest`)."""
    try:
        with os.scandir(runs_dir) as listing:
            return sorted(e.name for e in listing if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except OSError:  # none yet, or not a directory
        return []


def _now() -> str:
    """UTC, as datetime.now(timezone.utc).isoformat(timespec="milliseconds") writes it (time, not
    datetime: a cached run does not import datetime, 5 M instructions)."""
    now = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000)) + f".{_ms(now)}+00:00"


def _ms(ns: int) -> str:
    return f"{ns // 1_000_000 % 1000:03d}"


def _point_latest(runs_dir: str, run_id: str) -> None:
    """`runs/latest` is a symlink swapped atomically (a plain file naming the run where links fail)."""
    tmp = f"{runs_dir}/.latest.{os.getpid()}.{os.urandom(3).hex()}"
    try:
        os.symlink(run_id, tmp)
    except OSError:
        with open(tmp, "w") as f:
            f.write(run_id)
    os.replace(tmp, f"{runs_dir}/{LATEST}")
