"""Artifacts of past runs: `orchestrator.load(...)` in Python, `orch get` on the command line.

A run's manifest (runs/<id>/manifest.json) names each node's parameter set, cache key and output
object hashes; the node's cache entry (under its key) holds each output's stored object, the
identity of the cacher that wrote it and the cacher's metadata. So an artifact is found by
(run, parameter set, name) -> node -> entry -> object, and loaded by rebuilding its cacher from
the identity recorded in the entry — only classes that are Cacher subclasses are accepted.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cachers import Cacher
from ..core.status import Status
from ..errors import ArtifactLoadError, ArtifactNotFoundError, DamagedObjectError, OrchError, ParamSetNotFoundError

log = logging.getLogger(__name__)


@dataclass
class Artifact:
    """One stored output of a past run, located but not loaded."""

    name: str
    run_id: str
    param_set: str
    stage: str
    path: Path  # the stored object (read-only)
    cacher: Cacher
    metadata: dict | None
    ext: str

    def load(self, **options) -> Any:
        """The value, through the cacher that stored it; options go to its load (e.g. device="cpu")."""
        what = f"artifact {self.name!r} of run {self.run_id} [{self.param_set}]"
        try:
            return self.cacher.load(str(self.path), self.metadata, **options)
        except DamagedObjectError as e:
            raise ArtifactLoadError(f"{what}: {e}; re-run the experiment to recompute it") from e
        except OrchError:
            raise
        except TypeError as e:
            if "argument" in str(e):  # an option this cacher does not take
                raise ArtifactLoadError(f"{what}: {self.cacher!r}.load() does not accept {sorted(options)}: {e}") from e
            raise ArtifactLoadError(f"{what} cannot be loaded by {self.cacher!r}: TypeError: {e}") from e
        except Exception as e:
            raise ArtifactLoadError(
                f"{what} cannot be loaded by {self.cacher!r} ({self.path}): {type(e).__name__}: {e}; if a class it "
                f"needs moved or changed since that run, restore it or re-run the experiment"
            ) from e


def load(name: str, run: str = "latest", param_set: str | None = None, cache: str | os.PathLike | None = None,
         experiment_dir: str | os.PathLike | None = None, **options) -> Any:
    """The artifact `name` of a past run, loaded as the stage that made it returned it.

    run: a run id (or a unique prefix of one), default the latest run. param_set: needed only when
    several parameter sets have the artifact; its name or a short form naming one set by swept
    values ("lr=0.1,width=16", see runs.paramsets). With run="latest" and a set the latest run does
    not have (a sweep ran since), the latest run with that set and artifact, with a logged warning
    naming it. cache: the cache directory; default $ORCH_CACHE, else
    `.orch` in experiment_dir, else the nearest `.orch` in the current directory or its parents.
    Other keyword options go to the cacher's load, e.g. `load("model", device="cpu")`.
    """
    return locate(name, run, param_set, cache, experiment_dir).load(**options)


def locate(name: str, run: str = "latest", param_set: str | None = None, cache: str | os.PathLike | None = None,
           experiment_dir: str | os.PathLike | None = None) -> Artifact:
    """Find (never load) an artifact of a past run; errors list the runs, sets or artifacts that exist."""
    from ..store import DiskStore, cache_dir

    root = cache_dir(cache, experiment_dir)
    manifest, node, note = _resolve(root, name, run, param_set)
    if note:
        log.warning("%s", note)
    run_id = manifest.get("run_id", run)
    store = DiskStore(root, write=False)  # reading an artifact needs no write access
    obj_hash = node["outputs"][name]
    stored = None
    for entry in store.get_entries(node["key"], label=f"{node['stage']}[{node['param_set']}]") if node.get("key") else []:
        out = entry.outputs.get(name)
        if out is not None and out.object.hash == obj_hash:
            stored = out
            break
    if stored is None:
        raise ArtifactNotFoundError(
            f"artifact {name!r} of run {run_id} [{node['param_set']}] (stage {node['stage']}) has no cache entry any "
            f"more (removed by `orch cache gc`, or the stage keeps an output in memory only); re-run the experiment"
        )
    info = stored.object
    try:
        path = store.object_path(info, verify=True)
    except DamagedObjectError as e:
        raise ArtifactLoadError(f"artifact {name!r} of run {run_id} [{node['param_set']}]: {e}; re-run the "
                                f"experiment to recompute it") from e
    _project_on_path(manifest)
    cacher = cacher_from_identity(stored.cacher, f"artifact {name!r} of run {run_id}")
    _trace_in_running_stage(root, run, param_set, name, info.hash)
    return Artifact(name, run_id, node["param_set"], node["stage"], path, cacher, stored.metadata, info.ext)


def _trace_in_running_stage(root: Path, run: str, param_set: str | None, name: str, digest: str) -> None:
    """Inside a running stage, what it loads from another run is part of what it read: the same
    query answered by another object later (a newer "latest", a re-trained model) re-runs it."""
    from ..core.keys import artifact_trace_name
    from ..record import current_record

    record = current_record.get()
    if record is not None:
        record.trace_artifact(artifact_trace_name(str(root), run, param_set, name), digest)


def artifact_hash(query: dict) -> str | None:
    """The object a traced artifact query resolves to now (core.traced); None when it no longer
    resolves (the run, set or artifact is gone)."""
    from ..store import cache_dir

    try:
        _, node, _ = _resolve(cache_dir(query["cache"]), query["name"], query["run"], query.get("param_set"))
        return node["outputs"][query["name"]]
    except (OrchError, KeyError, TypeError):
        return None


def _resolve(root: Path, name: str, run: str, param_set: str | None) -> tuple[dict, dict, str | None]:
    """(manifest, node, note): the run and node that `load(name, run, param_set)` means. With
    run="latest" and a parameter set the latest run does not have (a sweep ran since), the latest
    run that has that set and that artifact; `note` then says which run that is."""
    from ..runs.manifest import LATEST, manifests_newest_first, read_manifest, set_names
    from ..runs.paramsets import matching_sets

    manifest = read_manifest(root, run)
    run_id = manifest.get("run_id", run)
    if run != LATEST or param_set is None or matching_sets(param_set, set_names(manifest)):
        return manifest, _find_node(manifest, name, param_set, run_id), None
    for older_id, older in manifests_newest_first(root):
        if older_id == run_id or not matching_sets(param_set, set_names(older)):
            continue
        try:
            node = _find_node(older, name, param_set, older.get("run_id", older_id))
        except ArtifactNotFoundError:  # it has the set but not the artifact (failed, or not run yet)
            continue
        return older, node, (f"using run {older.get('run_id', older_id)}, the latest run with parameter set "
                             f"{node['param_set']!r} and artifact {name!r} (the latest run, {run_id}, has no such set)")
    try:
        return manifest, _find_node(manifest, name, param_set, run_id), None
    except ParamSetNotFoundError as e:
        raise ParamSetNotFoundError(f"{e}; no earlier run has artifact {name!r} in such a set either") from None


def _find_node(manifest: dict, name: str, param_set: str | None, run_id: str) -> dict:
    """The node of `manifest` whose output `name` is asked for; `param_set` is an exact set name or a
    short form (runs.paramsets)."""
    from ..runs.manifest import set_names
    from ..runs.paramsets import example_short_form, listing, resolve_param_set

    nodes = manifest.get("nodes", [])
    if not nodes and manifest.get("status") == "running":
        raise ArtifactNotFoundError(f"run {run_id} has not finished (it is running, or was killed): its manifest "
                                    f"lists no artifacts yet; pick another run with run=... / --run")
    if param_set is not None:
        param_set = resolve_param_set(param_set, set_names(manifest), f"run {run_id}")
    having = [n for n in nodes if name in n.get("outputs", {})]
    if param_set is not None:
        in_set = [n for n in having if n["param_set"] == param_set]
        if not in_set:
            known = sorted({a for n in nodes if n["param_set"] == param_set for a in n.get("outputs", {})})
            raise ArtifactNotFoundError(_missing(name, run_id, nodes, param_set, known))
        return max(in_set, key=lambda n: n["id"])  # the latest producer of the name, as inputs resolve
    if not having:
        known = sorted({a for n in nodes for a in n.get("outputs", {})})
        raise ArtifactNotFoundError(_missing(name, run_id, nodes, None, known))
    found_in = list(dict.fromkeys(n["param_set"] for n in having))
    if len(found_in) > 1:
        example = example_short_form(found_in)
        raise ParamSetNotFoundError(f"artifact {name!r} exists in {len(found_in)} parameter sets of run {run_id}: "
                                    f"{listing(found_in)}; choose one with param_set=... (orch get: --param-set)"
                                    + (f", by its name or its swept values, e.g. {example}" if example else ""))
    return max(having, key=lambda n: n["id"])


def _missing(name: str, run_id: str, nodes: list[dict], param_set: str | None, known: list[str]) -> str:
    where = f"run {run_id}" + (f" [{param_set}]" if param_set else "")
    failed = [n for n in nodes if n["status"] in (Status.FAILED, Status.SKIPPED) and (param_set is None or n["param_set"] == param_set)]
    msg = f"no stored artifact {name!r} in {where}; stored artifacts: {', '.join(known) or 'none'}"
    if failed:
        msg += f" (not produced: {', '.join(sorted({n['stage'] + ' ' + n['status'] for n in failed}))})"
    return msg


def _project_on_path(manifest: dict) -> None:
    """Custom cachers and model classes live in the experiment's project: make it importable."""
    experiment = manifest.get("experiment")
    if experiment:
        root = str(Path(experiment).parent)
        if os.path.isdir(root) and root not in sys.path:
            sys.path.insert(0, root)


def cacher_from_identity(identity, what: str = "artifact") -> Cacher:
    """Rebuild a cacher from the ["module:QualName", config] recorded in an entry. The named object
    must be a Cacher subclass: an entry can never make this construct anything else."""
    try:
        qualname, config = identity
        module_name, _, attr = qualname.partition(":")
    except (TypeError, ValueError, AttributeError):
        raise ArtifactLoadError(f"{what}: its cache entry records no usable cacher ({identity!r})") from None
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ArtifactLoadError(f"{what} was stored by the cacher {qualname}, which cannot be imported here "
                                f"({type(e).__name__}: {e}); run from the experiment's directory or pass experiment_dir=") from e
    if not (isinstance(obj, type) and issubclass(obj, Cacher)):
        raise ArtifactLoadError(f"{what}: its entry names {qualname} as cacher, which is not a Cacher subclass; refusing it")
    try:
        return obj.from_config(config)
    except (TypeError, ValueError) as e:
        raise ArtifactLoadError(f"{what}: cannot rebuild the cacher {qualname} from its recorded config {config!r}: {e}; "
                                f"its config() must return its constructor's keyword arguments") from e


# ------------------------------------------------------------------------------------------ orch get


def export(artifact: Artifact, dest: str | os.PathLike, force: bool = False) -> list[Path]:
    """Copy an artifact's files out of the store to `dest` (writable copies); returns what was written.

    One file or directory: `dest` is the new path, or an existing directory to copy into (named
    after the artifact). Several (a list of paths): `dest` is a directory, created if needed."""
    sources = [Path(p) for p in artifact.cacher.exported_paths(str(artifact.path), artifact.metadata)]
    dest = Path(dest)
    if len(sources) == 1 and not dest.is_dir():
        targets = [dest]
    else:
        if dest.exists() and not dest.is_dir():
            raise ArtifactLoadError(f"artifact {artifact.name!r} is {len(sources)} files; -o must be a directory, "
                                    f"and {dest} is a file")
        names = [_export_name(artifact, s) for s in sources] if len(sources) == 1 else [s.name for s in sources]
        if len(set(names)) != len(names):
            names = [f"{i}-{n}" for i, n in enumerate(names)]
        targets = [dest / n for n in names]
    clash = [t for t in targets if os.path.lexists(t)]
    if clash and not force:
        raise ArtifactLoadError(f"{clash[0]} already exists; choose another -o or pass --force to replace it")
    written = []
    for src, target in zip(sources, targets):
        if not os.path.exists(src):
            raise ArtifactLoadError(f"artifact {artifact.name!r}: {src} no longer exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            _remove(target)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, copy_function=shutil.copyfile)
            for d, _, _ in os.walk(target):  # stored trees are read-only; the copy is the user's
                os.chmod(d, 0o755)
        else:
            shutil.copyfile(src, target)
        written.append(target)
    return written


def _export_name(artifact: Artifact, src: Path) -> str:
    """The artifact's own file name when it had one (FileReferenceCacher), else NAME + extension."""
    meta = artifact.metadata or {}
    if meta.get("mode") == "item" and meta.get("name"):
        return meta["name"]
    if src != artifact.path:
        return src.name  # a file of a list, or a referenced file outside the store, keeps its name
    return artifact.name.replace(os.sep, "_") + artifact.ext


def _remove(path: Path) -> None:
    from ..fsutil import rmtree_force

    rmtree_force(path)
