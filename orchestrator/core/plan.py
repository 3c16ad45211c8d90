"""Planning: what is cached, what must run, and why. Pure with respect to the run: it reads the
store, never writes it, never loads an artifact.

Each node is decided from its key (core.keys) and the entries stored under it: a hit needs an entry
whose recorded reads all still hold and whose objects are present. A node whose upstream must run
has no key yet: it is PENDING until the run loop knows its inputs' content (early cutoff may still
make it a hit).
"""

from __future__ import annotations

from ..errors import PlanningError
from ..fsutil import LazyLogger
from ..hashing import Fingerprinter, hash_value, sha
from ..params import resolve, traced_value
from ..store import Entry, KeyComponents, Store
from . import keys
from .graph import Graph, Node
from .status import Status
from .traced import current_hash

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from ..stage import Stage

log = LazyLogger("orchestrator.store")  # (the logger of the store's other warnings about damaged entries)
# Hot loops compare states per node: plain module constants (enum member lookup costs ~0.2 µs each).
CACHED, RUN, PENDING, RAN, FAILED, SKIPPED, DAMAGED = (Status.CACHED, Status.RUN, Status.PENDING, Status.RAN,
                                                      Status.FAILED, Status.SKIPPED, Status.DAMAGED)


class Decision:
    """What planning (or the run loop, re-deciding) says of one node. A plain class, not a dataclass:
    this module is imported by every run, and a dataclass is generated and compiled at import."""

    __slots__ = ("state", "reason", "key", "entry", "components")

    def __init__(self, state: Status, reason: str, key: str | None = None, entry: Entry | None = None,
                 components: KeyComponents | None = None):
        self.state = state  # CACHED, RUN or PENDING
        self.reason = reason  # why it must run ("" for a hit)
        self.key = key
        self.entry = entry  # the hit
        self.components = components

    def __repr__(self) -> str:
        return f"Decision({self.state!r}, {self.reason!r}, key={self.key!r})"


class PlanContext:
    """Everything planning needs besides the graph; memoizes hashes shared by many nodes."""

    def __init__(self, store: Store, fingerprinter: Fingerprinter, project_root: str, overwrite: bool = False,
                 forced: set[int] | None = None):
        self.store, self.fingerprinter, self.project_root = store, fingerprinter, project_root
        self.overwrite = overwrite
        self.forced: set[int] = forced if forced is not None else set()
        self._fingerprints: dict[str, str] = {}
        self._code_items: dict[str, dict] = {}
        self._previous_rows: dict | None = None
        self._declarations: dict[str, str] = {}
        self._read_hashes: dict[tuple[str, str, tuple], str] = {}
        self._file_hashes: dict[str, str | None] = {}
        #: (parameter set, read paths, file names, ignored) -> the trace id those reads give now
        self.predicted: dict[tuple, str | None] = {}
        #: stage id -> {read signature: (parameter paths, file names)} seen in its entries (or, as
        #: hints, by an earlier planning: store.entryindex)
        self.signatures: dict[str, dict[str, tuple]] = {}
        #: stage id -> the signatures of entries this planning found (a hit, or listed under a key)
        self.signatures_seen: dict[str, set[str]] = {}
        #: code object -> the parameter paths its function visibly reads (core.lockscope)
        self.visible_reads: dict = {}
        #: while plan() runs: the objects found present (one lstat each, though many entries of a
        #: sweep share an object); None outside it, when a stage body may have damaged one since
        self.present_objects: set | None = None
        #: (read signature, the stage's ignored paths) -> whether entry names of it tell a hit from a
        #: miss (_names_tell)
        self.names_tell: dict[tuple, bool] = {}

    def code_items(self, node: Node) -> dict[str, list[str]]:
        """What the stage's fingerprint is made of (Fingerprinter.code_items), once per stage."""
        items = self._code_items.get(node.stage.id)
        if items is None:
            items = self._code_items[node.stage.id] = self.fingerprinter.code_items(node.stage.fn)
        return items

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
            h = self._read_hashes[memo_key] = keys.read_value_hash(traced_value(params, path, ignore))
        return h

    def file_hash(self, name: str) -> str | None:
        """Content hash of a traced file or artifact (core.traced); None if gone."""
        if name not in self._file_hashes:
            stat_cache = self.store.stat_cache()
            self._file_hashes[name] = current_hash(name, self.project_root, stat_cache)
            if stat_cache is not None:
                stat_cache.save()  # a no-op unless this file was hashed just now
        return self._file_hashes[name]

    def forget_file_hashes(self) -> None:
        """After a stage body ran: it may have written a tracked file, so the nodes decided from now
        on hash them again (through the stat cache: an unchanged file is one stat), and the trace
        ids predicted from the old hashes go with them."""
        self._file_hashes.clear()
        self.predicted.clear()

    def previous_rows(self) -> dict[tuple[str, str], dict]:
        """(stage id, parameter set) -> its row in the most recent of the last few runs that had it
        (core.explain: the previous computation of a node that has no head of its own)."""
        if self._previous_rows is None:
            from ..runs.manifest import recent_node_rows
            from .explain import RECENT_RUNS

            root = self.store.directory
            self._previous_rows = recent_node_rows(root, RECENT_RUNS) if root is not None else {}
        return self._previous_rows

    def check_trace(self, entry: Entry, node: Node, params: dict) -> str | None:
        ignore = node.stage.ignore
        return keys.check_trace(entry, ignore, lambda p: self.read_hash(node.set_name, params, p, ignore),
                                lambda p: resolve(params, p), self.file_hash)


#: The "hash" of an input whose producer failed, for a partial aggregate (@aggregate(partial=True)):
#: the input is left out of the key, so the key says which sets the result covers.
ABSENT = object()


def key_components(node: Node, graph: Graph, input_hashes: list, ctx: PlanContext) -> KeyComponents | None:
    """The parts of a node's key, kept in its entry so that a later miss can say which part changed.
    None when an input has no content hash (an in-memory value that cannot be pickled)."""
    if None in input_hashes:
        return None
    stage = node.stage
    if len(input_hashes) == 1 and input_hashes[0] is not ABSENT:  # a chain's node: one input
        e = node.inputs[0]
        inputs = {f"{e.input}@{e.set_name}" if e.set_name is not None else e.input: input_hashes[0]}
    else:
        inputs = {(f"{e.input}@{e.set_name}" if e.set_name is not None else e.input): h
                  for e, h in zip(node.inputs, input_hashes) if h is not ABSENT}
    sets = tuple(sorted(graph.param_sets)) if stage.kind == "aggregate" else None  # what it read of them: its trace
    stage_id = stage.id
    fp = ctx._fingerprints.get(stage_id) or ctx.fingerprint(node)
    decl = ctx._declarations.get(stage_id) or ctx.declaration_hash(node)
    return KeyComponents(stage_id, stage.version, fp, decl, inputs, sets)


def lookup(node: Node, key: str, params: dict, ctx: PlanContext) -> Entry | None:
    """An entry of `key` whose trace still holds and whose objects are present, or None (why a node
    misses is core.explain's question).

    Fast path: for each read signature this stage is known to have, predict the trace id from the
    current parameter and file values and open that one entry. Slow path (first sight of a stage, or
    a miss): read all entries of the key, learning their signatures for the nodes that follow."""
    stage_id = node.stage.id
    known = ctx.signatures.get(stage_id)
    if known is None:
        known = ctx.signatures[stage_id] = {}
    seen = ctx.signatures_seen.get(stage_id)
    if seen is None:
        seen = ctx.signatures_seen[stage_id] = set()
    store = ctx.store
    tried = set()  # signatures whose only entry that could hold was just tried by name
    for sig, (reads, files) in known.items():
        tid = _predicted_trace_id(node, params, reads, files, ctx)
        entry = store.get_entry(key, tid, label=node.label) if tid is not None else None
        if entry is not None and declares_outputs(entry, node.stage, node.label, store) and _outputs_present(entry, ctx):
            seen.add(sig)
            return entry
        if tid is not None and _names_tell(sig, reads, files, node.stage.ignore, ctx):
            tried.add(sig)
    entries = []
    for tid in store.trace_ids(key):
        sig = keys.signature_of(tid)
        seen.add(sig)
        if sig in tried:  # another name of a tried signature: an entry that recorded other values
            continue
        entry = store.get_entry(key, tid, label=node.label)
        if entry is not None and declares_outputs(entry, node.stage, node.label, store):
            entries.append(entry)
    entries.sort(key=_created, reverse=True)  # newest first, as get_entries gives them
    for entry in entries:
        sig = keys.signature_of(entry.trace_id)
        if sig not in known:
            known[sig] = (tuple(entry.reads), tuple(entry.files))
        if ctx.check_trace(entry, node, params) is None and _outputs_present(entry, ctx):
            return entry
    return None


def _created(entry: Entry) -> float:
    return entry.created


def _names_tell(sig: str, reads: tuple, files: tuple, ignore: tuple, ctx: PlanContext) -> bool:
    """keys.names_tell, memoized for the planning."""
    told = ctx.names_tell.get((sig, ignore))
    if told is None:
        told = ctx.names_tell[(sig, ignore)] = keys.names_tell(sig, reads, files, ignore)
    return told


def declares_outputs(entry: Entry, stage: Stage, label: str, store: Store) -> bool:
    """The entry records exactly the outputs the stage declares. The key covers the declaration, so
    only a damaged or hand-edited entry does not; it is a miss (with a warning), not a crash of a
    consumer looking for an output it lacks."""
    if entry.outputs.keys() == stage.output_names:
        return True
    if store.first_warning(f"{entry.key}/{entry.trace_id}:outputs"):
        log.warning("ignoring the cache entry %s of %s: it records the outputs [%s], the stage declares [%s] "
                    "(damaged or edited by hand); treated as a cache miss", entry.trace_id, label,
                    ", ".join(sorted(entry.outputs)), ", ".join(sorted(stage.output_names)))
    return False


def _outputs_present(entry: Entry, ctx: PlanContext) -> bool:
    """Every object of `entry` passes the store's cheap check; during plan(), an object already
    found present by this planning is not looked at again."""
    present = ctx.present_objects
    if present is None:
        return not ctx.store.missing_outputs(entry)
    objects = [out.object for out in entry.outputs.values()]
    if all(o in present for o in objects):
        return True
    if ctx.store.missing_outputs(entry):
        return False
    present.update(objects)
    return True


def _predicted_trace_id(node: Node, params: dict, reads: tuple, files: tuple, ctx: PlanContext) -> str | None:
    """The trace id an entry of this signature would have now; memoized per parameter set, as the
    read and file hashes it is made of are."""
    ignore = node.stage.ignore
    memo_key = (node.set_name, reads, files, ignore)
    tid = ctx.predicted.get(memo_key, False)
    if tid is False:
        set_name = node.set_name
        tid = ctx.predicted[memo_key] = keys.holding_trace_id(
            reads, files, lambda p: ctx.read_hash(set_name, params, p, ignore), ctx.file_hash)
    return tid


def record_code_manifests(graph: Graph, decisions: list[Decision], ctx: PlanContext) -> None:
    """Before a run: remember what the fingerprints of the stages about to run are made of, so
    that a later code change can be explained by file and function."""
    from ..store import CodeManifest

    manifests = {}
    for node, d in zip(graph.nodes, decisions):
        if d.state != CACHED and node.stage.cached:
            digest = ctx.fingerprint(node)
            if digest not in manifests:
                manifests[digest] = CodeManifest(ctx.code_items(node))
    if manifests:
        ctx.store.put_code_manifests(manifests)


def decide(node: Node, graph: Graph, input_hashes: list[str | None], ctx: PlanContext) -> Decision:
    """The decision for one node whose inputs' content is known."""
    stage = node.stage
    comp = key_components(node, graph, input_hashes, ctx)
    key = keys.node_key(comp) if comp is not None else None
    if not stage.cached:
        return Decision(RUN, "keeps its outputs in memory only (no cacher)", key, None, comp)
    if key is None:
        return Decision(RUN, "an input is an in-memory value that cannot be hashed")
    if ctx.overwrite:
        return Decision(RUN, "--overwrite", key, None, comp)
    if node.id in ctx.forced:
        return Decision(RUN, "--overwrite-stage", key, None, comp)
    params = graph.params_of(node)
    entry = lookup(node, key, params, ctx)
    if entry is not None:
        if entry.accepted:
            from orchestrator.core.explain import acceptance_note

            return Decision(CACHED, acceptance_note(entry), key, entry, comp)
        return Decision(CACHED, "", key, entry, comp)
    # A miss only: a fully cached run does not import the explainer (absolute: a relative import costs
    # ~1 us more per node, which a first run of 100,000 nodes would pay 100,000 times).
    from orchestrator.core.explain import why_miss

    return Decision(RUN, why_miss(node, comp, key, params, ctx), key, None, comp)


def signature_hints(graph: Graph, ctx: PlanContext) -> dict[str, dict[str, tuple]]:
    """What the next planning should try first, per stage of this graph: the signatures of entries
    this planning found; for a stage none of whose nodes was looked up (all pending), the hints it
    started with. Signatures of entries gone since (gc, verify) are dropped, so hints do not only grow."""
    hints = {}
    for stage_id in {n.stage.id for n in graph.nodes}:
        sigs = ctx.signatures.get(stage_id)
        if not sigs:
            continue
        seen = ctx.signatures_seen.get(stage_id)
        hints[stage_id] = sigs if seen is None else {s: v for s, v in sigs.items() if s in seen}
    return hints


def forced_nodes(graph: Graph, stage_names: list[str]) -> set[int]:
    """--overwrite-stage NAME: the named stages and everything downstream of them."""
    if not stage_names:
        return set()
    known = {n.stage.name for n in graph.nodes} | {n.stage.id for n in graph.nodes}
    unknown = [s for s in stage_names if s not in known]
    if unknown:
        names = sorted({n.stage.name for n in graph.nodes})
        raise PlanningError(f"--overwrite-stage {', '.join(unknown)}: no such stage in this experiment; stages: {', '.join(names)}")
    wanted = set(stage_names)
    roots = {n.id for n in graph.nodes if n.stage.name in wanted or n.stage.id in wanted}
    return graph.downstream(roots)


def plan(graph: Graph, ctx: PlanContext) -> list[Decision]:
    """Decide every node assuming nothing runs yet: downstream of a node that must run is pending.

    Every stage is fingerprinted now, before anything runs: code edited during a long run must not
    be attributed to the nodes that run later."""
    if len(graph.nodes) > sha.OPENSSL_FROM_NODES:
        sha.use_openssl()  # many digests ahead: the faster sha256 pays for loading it (hashing.sha)
    for node in graph.nodes:
        ctx.fingerprint(node)
    ctx.present_objects = set()
    try:
        return _plan(graph, ctx)
    finally:
        ctx.present_objects = None


def _plan(graph: Graph, ctx: PlanContext) -> list[Decision]:
    decisions: list[Decision] = []
    known: list[dict[str, str] | None] = []  # output content hashes of cached nodes
    for node in graph.nodes:
        upstream = [known[e.producer] for e in node.inputs]
        if None in upstream:
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
        known.append({n: o.object.hash for n, o in d.entry.outputs.items()} if d.state == CACHED else None)
    return decisions
