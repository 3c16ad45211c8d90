"""Planning: what is cached, what must run, and why. Pure with respect to the run: it reads the
store, never writes it, never loads an artifact.

A node's key covers (1) the stage identity and version, (2) its code fingerprint, (3) the content
hashes of its inputs, and is looked up together with (4) the trace of what the stage read when it
last ran (parameter values, tracked files): an entry is a hit only if every recorded read still has
the same value. A node whose upstream must run has no key yet: it is "pending" until the runner
knows its inputs' content (early cutoff may still make it a hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .graph import Graph, Node
from ..hashing import Fingerprinter, StatCache, hash_path, hash_value
from ..params import MISSING, is_ignored, resolve, traced_value
from ..store import ObjectInfo, Store

CACHED, RUN, PENDING = "cached", "run", "pending"
KEY_VERSION = "orch-node-v1"


@dataclass(slots=True)
class Decision:
    state: str
    reason: str
    key: str | None = None
    entry: dict | None = None
    components: dict | None = None


@dataclass
class PlanContext:
    """Everything planning needs besides the graph; memoizes hashes shared by many nodes."""

    store: Store
    fingerprinter: Fingerprinter
    project_root: Path
    overwrite: bool = False
    forced: set[int] = field(default_factory=set)
    _fingerprints: dict[str, str] = field(default_factory=dict)
    _declarations: dict[str, str] = field(default_factory=dict)
    _read_hashes: dict[tuple[str, str, tuple], str] = field(default_factory=dict)
    _file_hashes: dict[str, str | None] = field(default_factory=dict)
    #: stage id -> {read signature: (parameter paths, file names)} seen in its entries
    signatures: dict[str, dict[str, tuple]] = field(default_factory=dict)

    def fingerprint(self, node: Node) -> str:
        fp = self._fingerprints.get(node.stage.id)
        if fp is None:
            fp = self._fingerprints[node.stage.id] = self.fingerprinter.fingerprint(node.stage.fn)
        return fp

    def declaration_hash(self, node: Node) -> str:
        h = self._declarations.get(node.stage.id)
        if h is None:
            h = self._declarations[node.stage.id] = hash_value(node.stage.declaration())
        return h

    def read_hash(self, set_name: str, params: dict, path: str, ignore: tuple) -> str:
        memo_key = (set_name, path, ignore)
        h = self._read_hashes.get(memo_key)
        if h is None:
            h = self._read_hashes[memo_key] = read_value_hash(traced_value(params, path, ignore))
        return h

    def file_hash(self, name: str) -> str | None:
        if name not in self._file_hashes:
            p = Path(name)
            if not p.is_absolute():
                p = self.project_root / p
            stat_cache = stat_cache_for(self.store)
            try:
                self._file_hashes[name] = hash_path(p, stat_cache)[1]
            except FileNotFoundError:
                self._file_hashes[name] = None
            if stat_cache is not None:
                stat_cache.save()  # a no-op unless this file was hashed just now
        return self._file_hashes[name]


_STAT_CACHES: dict[str, StatCache] = {}


def stat_cache_for(store: Store) -> StatCache | None:
    """The stat cache persisted in the cache directory (`stat-cache.json`), one per process and
    store: tracked and referenced files that are unchanged by (size, mtime_ns, inode) are never
    hashed again. None for a store without a directory (the in-memory test store)."""
    root = getattr(store, "root", None)
    if root is None:
        return None
    cache = _STAT_CACHES.get(str(root))
    if cache is None:
        cache = _STAT_CACHES[str(root)] = StatCache(Path(root) / "stat-cache.json")
    return cache


def read_value_hash(value: Any) -> str:
    """The hash recorded for one parameter read; absence is tagged, never confused with a value."""
    if value is MISSING:
        return hash_value(("missing",))
    return hash_value(("value", value))


def trace_id(reads: dict[str, str], files: dict[str, str]) -> str:
    """Name of an entry: "<signature>-<values>". The signature covers *which* parameters and files
    were read, the rest their values, so a lookup that knows a stage's usual reads can predict the
    name of a matching entry and open it directly instead of reading every entry of the key."""
    sig = trace_signature(reads, files)
    values = hash_value(("trace", sorted(reads.items()), sorted(files.items())))
    return f"{sig}-{values[:40]}"


def trace_signature(reads, files) -> str:
    return hash_value(("reads", sorted(reads), sorted(files)))[:16]


def key_components(node: Node, graph: Graph, input_hashes: list[str | None], ctx: PlanContext) -> dict | None:
    """The parts of a node's key, kept in its entry so that a later miss can say which part changed.
    None when an input has no content hash (an in-memory value that cannot be pickled)."""
    if any(h is None for h in input_hashes):
        return None
    stage = node.stage
    inputs = {(f"{e.input}@{e.set_name}" if e.set_name is not None else e.input): h
              for e, h in zip(node.inputs, input_hashes)}
    comp = {
        "stage": stage.id,
        "version": stage.version,
        "code": ctx.fingerprint(node),
        "decl": ctx.declaration_hash(node),
        "inputs": inputs,
    }
    if stage.kind == "aggregate":  # which sets it covers; what it read of their parameters is in its trace
        comp["sets"] = sorted(graph.param_sets)
    return comp


def node_key(components: dict) -> str:
    static = {k: v for k, v in components.items() if k != "inputs"}
    return hash_value((KEY_VERSION, hash_value(sorted(static.items())), sorted(components["inputs"].items())))


def head_key(node: Node) -> str:
    """Where the latest key of (stage, parameter set) is remembered, to explain misses."""
    return hash_value(("head", node.stage.id, node.set_name))


def check_trace(entry: dict, node: Node, params: dict, ctx: PlanContext) -> str | None:
    """None if every recorded read still has its value; else a sentence naming the first change."""
    ignore = node.stage.ignore
    for path, rec in entry.get("reads", {}).items():
        if is_ignored(path, ignore):
            continue
        if ctx.read_hash(node.set_name, params, path, ignore) != rec["h"]:
            now = resolve(params, path)
            return f"parameter {path or '<all>'} changed: {_show(rec.get('v'))} -> {_show(now)}"
    for name, digest in entry.get("files", {}).items():
        if ctx.file_hash(name) != digest:
            return f"file {name} changed" if ctx.file_hash(name) else f"file {name} is gone"
    return None


def _show(v: Any) -> str:
    if v is MISSING or v == "<missing>":
        return "<missing>"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def lookup(node: Node, key: str, params: dict, ctx: PlanContext) -> tuple[dict | None, str]:
    """Find an entry of `key` whose trace matches; else the reason for the miss.

    Fast path: for each read signature this stage is known to have, predict the trace id from the
    current parameter and file values and open that one entry. Slow path (first sight of a stage, or
    a miss): read all entries of the key, learning their signatures for the nodes that follow."""
    known = ctx.signatures.setdefault(node.stage.id, {})
    for reads, files in known.values():
        tid = _predicted_trace_id(node, params, reads, files, ctx)
        entry = ctx.store.get_entry(key, tid) if tid is not None else None
        if entry is not None and _outputs_present(entry, ctx) is None:
            return entry, ""
    first_reason = None
    for entry in ctx.store.get_entries(key):
        sig = entry["trace_id"].split("-", 1)[0]
        if sig not in known:
            known[sig] = (tuple(entry.get("reads", {})), tuple(entry.get("files", {})))
        why = check_trace(entry, node, params, ctx) or _outputs_present(entry, ctx)
        if why is None:
            return entry, ""
        first_reason = first_reason or why
    return None, first_reason or ""


def _predicted_trace_id(node: Node, params: dict, reads: tuple, files: tuple, ctx: PlanContext) -> str | None:
    ignore = node.stage.ignore
    read_hashes = {p: ctx.read_hash(node.set_name, params, p, ignore) for p in reads}
    file_hashes = {}
    for name in files:
        h = ctx.file_hash(name)
        if h is None:
            return None
        file_hashes[name] = h
    return trace_id(read_hashes, file_hashes)


def _outputs_present(entry: dict, ctx: PlanContext) -> str | None:
    missing = [name for name, out in entry["outputs"].items()
               if not ctx.store.has_object(ObjectInfo.from_json(out["object"]))]
    return f"stored output {', '.join(missing)} is missing or damaged" if missing else None


def explain_new_key(node: Node, comp: dict, ctx: PlanContext) -> str:
    """Compare with the last key this (stage, set) had: which of code/version/inputs changed."""
    head = ctx.store.get_ref(head_key(node))
    if head is None:
        return "never ran for this parameter set"
    old = head.get("components", {})
    changes = []
    if old.get("version") != comp["version"]:
        changes.append(f"version {old.get('version')!r} -> {comp['version']!r}")
    if old.get("code") != comp["code"]:
        changes.append("code changed (the stage or a project function it uses)")
    if old.get("decl") != comp["decl"]:
        changes.append("declaration changed (inputs, outputs or cachers)")
    old_in, new_in = old.get("inputs", {}), comp["inputs"]
    for name in sorted(set(old_in) | set(new_in)):
        if old_in.get(name) != new_in.get(name):
            changes.append(f"input {name} changed" if name in old_in and name in new_in else f"input {name} added/removed")
    if old.get("sets") != comp.get("sets"):
        changes.append("parameter sets changed")
    if changes:
        return "; ".join(changes)
    if head.get("key") != node_key(comp):
        return "orch's cache key format changed since the last run"
    return "its cache entry was removed (orch cache gc/verify, or by hand)"


def decide(node: Node, graph: Graph, input_hashes: list[str | None], ctx: PlanContext) -> Decision:
    """The decision for one node whose inputs' content is known."""
    stage = node.stage
    comp = key_components(node, graph, input_hashes, ctx)
    key = node_key(comp) if comp is not None else None
    if not stage.cached:
        return Decision(RUN, "keeps its outputs in memory only (no cacher)", key, None, comp)
    if key is None:
        return Decision(RUN, "an input is an in-memory value that cannot be hashed")
    if ctx.overwrite:
        return Decision(RUN, "--overwrite", key, None, comp)
    if node.id in ctx.forced:
        return Decision(RUN, "--overwrite-stage", key, None, comp)
    entry, why = lookup(node, key, graph.params_of(node), ctx)
    if entry is not None:
        return Decision(CACHED, "", key, entry, comp)
    return Decision(RUN, why or explain_new_key(node, comp, ctx), key, None, comp)


def forced_nodes(graph: Graph, stage_names: list[str]) -> set[int]:
    """--overwrite-stage NAME: the named stages and everything downstream of them."""
    if not stage_names:
        return set()
    known = {n.stage.name for n in graph.nodes} | {n.stage.id for n in graph.nodes}
    unknown = [s for s in stage_names if s not in known]
    if unknown:
        from ..errors import PlanningError

        names = sorted({n.stage.name for n in graph.nodes})
        raise PlanningError(f"--overwrite-stage {', '.join(unknown)}: no such stage in this experiment; stages: {', '.join(names)}")
    wanted = set(stage_names)
    roots = {n.id for n in graph.nodes if n.stage.name in wanted or n.stage.id in wanted}
    return graph.downstream(roots)


def output_hashes(entry: dict) -> dict[str, str]:
    return {name: out["object"]["hash"] for name, out in entry["outputs"].items()}


def plan(graph: Graph, ctx: PlanContext) -> list[Decision]:
    """Decide every node assuming nothing runs yet: downstream of a node that must run is pending.

    Every stage is fingerprinted now, before anything runs: code edited during a long run must not
    be attributed to the nodes that run later."""
    for node in graph.nodes:
        ctx.fingerprint(node)
    decisions: list[Decision] = []
    known: list[dict[str, str] | None] = []  # output content hashes of cached nodes
    for node in graph.nodes:
        upstream = [known[e.producer] for e in node.inputs]
        if any(u is None for u in upstream):
            waiting = sorted({graph.nodes[e.producer].stage.name for e, u in zip(node.inputs, upstream) if u is None})
            d = Decision(PENDING, f"waits on {', '.join(waiting)}")
            if ctx.overwrite or node.id in ctx.forced:
                d = Decision(RUN, "--overwrite" if ctx.overwrite else "--overwrite-stage")
            elif not node.stage.cached:
                d = Decision(RUN, "keeps its outputs in memory only (no cacher)")
        else:
            hashes = [u[e.output] for e, u in zip(node.inputs, upstream)]
            d = decide(node, graph, hashes, ctx)
        decisions.append(d)
        known.append(output_hashes(d.entry) if d.state == CACHED else None)
    return decisions
