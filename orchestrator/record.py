"""Record: one parameter set as a stage sees it.

During planning a Record is the wiring handle: calling a stage on it adds a node and returns it.
While a stage runs, its Record gives read-tracked parameters, staging paths (`get_path`/`get_dir`)
whose contents move into the store on success, and `track(path)` for files the result depends on.
A Record made by hand (`Record(params={...})`) lets tests call `stage.fn(record)` directly.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar

from .errors import PlanningError
from .params import TrackedParams, set_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, overload
else:
    from .typeshim import overload

#: The Record of the stage running in this context (set by the task around the stage call), so
#: helpers such as run_external can trace what the stage depends on without being handed it.
current_record: ContextVar["Record | None"] = ContextVar("orch_current_record", default=None)


class Record:
    #: hashing.StatCache the task sets so that tracked files unchanged since they were last hashed
    #: (by size, mtime_ns, inode) are not hashed again; None hashes every time.
    stat_cache = None

    def __init__(
        self,
        params: dict | None = None,
        name: str = "default",
        *,
        staging_dir: str | os.PathLike | None = None,
        project_root: str | os.PathLike | None = None,
        ignore=(),
        param_sets: dict | None = None,
        log_path: str | os.PathLike | None = None,
        checkpoint_root: str | os.PathLike | Callable[[], str] | None = None,
        code_roots=None,
        failed_sets: dict[str, str] | None = None,
        metrics_path: str | os.PathLike | None = None,
    ):
        self.name = name
        self.reads: dict[str, Any] = {}
        self.files: dict[str, str] = {}
        self.params = TrackedParams(params or {}, self.reads, set_name=name, ignore=ignore)
        # For aggregates: {parameter-set name: its read-tracked parameters}. Reads are recorded as
        # `<set_key(name)>.<path>`, so an aggregate re-runs only when a parameter it read changes.
        self.param_sets = {n: TrackedParams(v, self.reads, set_name=n, prefix=set_key(n), ignore=ignore)
                           for n, v in (param_sets or {}).items()}
        self.log_path = os.fspath(log_path) if log_path else None
        #: The node's metrics stream (orchestrator.metrics); None (a Record made by hand): `log` keeps
        #: the lines, as dicts, in `logged`.
        self.metrics_path = os.fspath(metrics_path) if metrics_path else None
        self.logged: list[dict] = []
        # Paths are made on first use: most stages never ask for them, and every node runs this
        self._staging: Path | str | None = staging_dir or None
        self._checkpoints: Path | str | None = checkpoint_root or None
        self._root: Path | str | None = project_root or None
        #: Whether the stage was given its staging directory (before that, nothing can be in it).
        self.staging_used = False
        self.code_roots = code_roots  # hashing.coderoots.CodeRoots while a stage runs under orch
        #: A partial aggregate: {parameter set: why it is missing} for the sets whose inputs failed
        #: or were skipped (their values are absent from the inputs). Empty otherwise.
        self.failed_sets: dict[str, str] = dict(failed_sets or {})
        self._graph = None
        self._producers: dict[str, tuple[int, str]] = {}

    # -- while a stage runs ------------------------------------------------------------------
    @property
    def project_root(self) -> Path | None:
        """The experiment's directory (relative paths in track() and run_external() start there)."""
        from pathlib import Path  # (a stage that runs: a cached run does not import pathlib)

        root = self._root
        if root is not None and type(root) is not Path:
            root = self._root = Path(root)
        return root

    @property
    def staging_dir(self) -> Path:
        from pathlib import Path

        if self._staging is None:
            if self._graph is not None:
                raise PlanningError(
                    f"record.get_path/get_dir is only available while a stage runs, not in run() "
                    f"(parameter set {self.name!r})"
                )
            import tempfile

            self._staging = Path(tempfile.mkdtemp(prefix="orch-record-"))
        elif type(self._staging) is not Path:
            self._staging = Path(self._staging)
        self.staging_used = True
        return self._staging

    def get_path(self, name: str) -> str:
        """A file path in this stage's staging area (moved into the store on success)."""
        path = self._staging_child(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def get_dir(self, name: str) -> str:
        """A directory in this stage's staging area, created empty if new."""
        path = self._staging_child(name)
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def checkpoint_dir(self, name: str = "checkpoints") -> str:
        """A directory that survives a failed or killed run of this stage and is removed once the
        stage has succeeded and its outputs are stored: write periodic checkpoints here and resume
        from the latest one, so a crash at hour 5 of 6 does not cost 5 hours. It belongs to this
        node: same stage code, inputs and parameter set (any parameter change gives a fresh one)."""
        from pathlib import Path

        if self._checkpoints is None:
            if self._graph is not None:
                raise PlanningError(f"record.checkpoint_dir is only available while a stage runs (parameter set {self.name!r})")
            import tempfile

            self._checkpoints = Path(tempfile.mkdtemp(prefix="orch-checkpoints-"))
        elif type(self._checkpoints) is not Path:  # a path, or what gives it (its name is a hash: made on use)
            root = self._checkpoints
            self._checkpoints = Path(root() if callable(root) else root)
        if not name or os.path.isabs(name) or ".." in Path(name).parts:
            raise PlanningError(f"checkpoint_dir takes a relative name, got {name!r}")
        path = self._checkpoints / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def log(self, step: int | None = None, **scalars) -> None:
        """Log scalar metrics of this node, e.g. `record.log(step=epoch, loss=loss, lr=lr)`.

        They stream to the node's metrics file as they are logged (a live display and the report read
        it); once the stage succeeds the entry keeps each metric's last, min and max, so a cached
        node still shows them (`orch compare`). Without a step, each metric counts 0, 1, 2, ..."""
        from . import metrics

        if self.metrics_path is None:
            self.logged.append(json.loads(metrics.encode(step, scalars)))
        else:
            metrics.append(self.metrics_path, step, scalars)

    def _staging_child(self, name: str) -> Path:
        from pathlib import Path

        if not name or os.path.isabs(name) or ".." in Path(name).parts:
            raise PlanningError(f"get_path/get_dir take a relative name inside the staging area, got {name!r}")
        return self.staging_dir / "files" / name

    @overload
    def track(self, path: str) -> str: ...

    @overload
    def track(self, path: os.PathLike[str]) -> os.PathLike[str]: ...

    def track(self, path: str | os.PathLike[str]) -> str | os.PathLike[str]:
        """Record a file or directory this stage depends on (editing it invalidates the stage) and
        return its path, so that `np.loadtxt(record.track("data/table.csv"))` reads what was tracked.

        A relative path starts at the experiment's directory. The path comes back as given (same
        type), unless the stage runs elsewhere: then it is joined to the experiment's directory, so
        it still names the tracked file. `tracked_hash(path)` gives the content hash recorded."""
        from pathlib import Path

        from .hashing import hash_path

        p = self._tracked_path(path)
        try:
            _, digest, _ = hash_path(p, self.stat_cache)
        except FileNotFoundError:
            raise PlanningError(f"record.track({os.fspath(path)!r}): no such file (parameter set {self.name!r})") from None
        self.files[self._trace_name(p)] = digest
        if Path(path).resolve() == p.resolve():  # the usual case: the stage runs in the experiment's directory
            return path
        return str(p) if isinstance(path, str) else p

    def tracked_hash(self, path: str | os.PathLike[str]) -> str:
        """The content hash `track(path)` recorded for `path` (the same path as given to it)."""
        try:
            return self.files[self._trace_name(self._tracked_path(path))]
        except KeyError:
            raise PlanningError(f"record.tracked_hash({os.fspath(path)!r}): not tracked by this stage; "
                                f"call record.track() first (parameter set {self.name!r})") from None

    def _tracked_path(self, path: str | os.PathLike[str]) -> Path:
        """The absolute path track() hashes: a relative one starts at the experiment's directory."""
        from pathlib import Path

        p = Path(path)
        if not p.is_absolute() and self.project_root is not None:
            p = self.project_root / p
        return p.absolute()

    def trace_artifact(self, traced_name: str, digest: str) -> None:
        """Record an artifact of another run this stage loaded (orchestrator.load calls this): a
        different artifact there later invalidates the stage (core.keys.artifact_trace_name)."""
        self.files[traced_name] = digest

    def _trace_name(self, p: Path) -> str:
        """Files inside the project are named relative to it, so a shared cache works across checkouts."""
        p = p.resolve()
        if self.project_root is not None:
            try:
                return p.relative_to(self.project_root.resolve()).as_posix()
            except ValueError:
                pass
        return str(p)

    # -- while planning ----------------------------------------------------------------------
    def _graph_of(self, stage):
        if self._graph is None:
            raise PlanningError(
                f"stage {stage.name} was called on a record that is not being planned; "
                f"inside a test call {stage.name}.fn(record, ...) instead"
            )
        return self._graph

    def __repr__(self) -> str:
        return f"Record({self.name!r})"
