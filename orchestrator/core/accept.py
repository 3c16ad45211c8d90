"""`orch accept`: declare that a stage's current code gives the same results as the code its cached
entries were computed with, and re-key those entries to the current code without running anything.

A refactor of a 6-hour training stage (a rename, a log line) changes its code fingerprint, so it
would re-run. Accepting is safe only where the code is the *only* difference: for each node of the
stage, the last key it had (its head) must differ from the current key in the code fingerprint alone
(same version, declaration, inputs and parameter sets), and one of that key's entries must still
hold for the current parameters and tracked files, with its objects present. Anything else is
refused, saying what differs. An accepted entry is the old one under the new key, marked with who
accepted it, when, and the old and new fingerprints; `orch why` and the report show that mark.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import PlanningError
from ..store import CodeManifest, Head
from . import keys
from .explain import code_change, component_changes
from .graph import Graph, Node
from .plan import Decision, PlanContext, declares_outputs
from .status import Status

ACCEPTED, WOULD_ACCEPT, ALREADY_CACHED, REFUSED = "accepted", "would accept", "cached", "refused"


@dataclass
class Acceptance:
    """What `orch accept` did (or, with --dry, would do) for one node."""

    node: Node
    outcome: str  # ACCEPTED, WOULD_ACCEPT, ALREADY_CACHED or REFUSED
    detail: str


def accept(graph: Graph, ctx: PlanContext, decisions: list[Decision], stage: str, param_set: str | None = None,
           dry: bool = False) -> list[Acceptance]:
    nodes = _nodes_of(graph, stage, param_set)
    who = f"{_user()}@{socket.gethostname()}"
    results = []
    for node in nodes:
        results.append(_accept_one(node, graph, ctx, decisions[node.id], dry, who))
    return results


def _nodes_of(graph: Graph, stage: str, param_set: str | None) -> list[Node]:
    names = sorted({n.stage.name for n in graph.nodes})
    nodes = [n for n in graph.nodes if stage in (n.stage.name, n.stage.id)]
    if not nodes:
        raise PlanningError(f"orch accept: no stage {stage!r} in this experiment; stages: {', '.join(names)}")
    if param_set is not None:
        sets = [n.set_name for n in nodes]
        nodes = [n for n in nodes if n.set_name == param_set]
        if not nodes:
            raise PlanningError(f"orch accept: stage {stage} has no node for parameter set {param_set!r}; "
                                f"its parameter sets: {', '.join(sets)}")
    return nodes


def _accept_one(node: Node, graph: Graph, ctx: PlanContext, d: Decision, dry: bool, who: str) -> Acceptance:
    """The checks, in order; the first that fails is the refusal."""
    if d.state == Status.CACHED:
        return Acceptance(node, ALREADY_CACHED, "already cached with the current code: nothing to accept")
    if not node.stage.cached:
        return Acceptance(node, REFUSED, "it keeps its outputs in memory only (no cacher): nothing is stored to accept")
    if d.state == Status.PENDING or d.components is None:
        return Acceptance(node, REFUSED, f"its inputs are not all computed yet ({d.reason}); run the stages it "
                                         f"depends on first, then accept")
    new = d.components
    own = ctx.store.get_head(keys.head_key(node.stage.id, node.set_name), label=node.label)
    if own is not None and own.components.code == new.code:
        return Acceptance(node, REFUSED, f"its code did not change; it would run because: {d.reason}")
    # The old code: what this node last ran with, or (a sweep point served by another set's entry)
    # what the stage's other parameter sets last ran with. Swapping only the code into the current
    # key's components keeps everything else (inputs, version, declaration) exactly as it is now.
    codes = [own.components.code] if own is not None else []
    for other in graph.nodes:
        if other.stage is node.stage and other.set_name != node.set_name:
            head = ctx.store.get_head(keys.head_key(other.stage.id, other.set_name), label=other.label)
            if head is not None and head.components.code not in codes and head.components.code != new.code:
                codes.append(head.components.code)
    params, why = graph.params_of(node), ""
    for old_code in codes:
        old_key = keys.node_key(new._replace(code=old_code))
        for candidate in ctx.store.get_entries(old_key, label=node.label):
            if not declares_outputs(candidate, node.stage, node.label, ctx.store):
                why = why or "its cache entry is damaged (see the warning)"
                continue
            missing = ctx.store.missing_outputs(candidate)
            reason = ctx.check_trace(candidate, node, params) or (
                f"stored output {', '.join(missing)} is missing" if missing else None)
            if reason is None:
                return _rekey(node, ctx, d, candidate, old_code, dry, who)
            why = why or reason
    if own is not None and (differs := component_changes(node, own.components, new, ctx, code=False)):
        return Acceptance(node, REFUSED, f"more than its code changed: {'; '.join(differs)}; only a code change can "
                                         f"be accepted (run it instead)")
    if why:
        return Acceptance(node, REFUSED, f"its earlier result does not hold any more: {why}; run it instead")
    if not codes:
        return Acceptance(node, REFUSED, "it never ran for this parameter set: there is no result to accept")
    return Acceptance(node, REFUSED, "its earlier entry is gone (orch cache gc/verify, or by hand); run it instead")


def _rekey(node: Node, ctx: PlanContext, d: Decision, entry, old_code: str, dry: bool, who: str) -> Acceptance:
    new = d.components
    change = f"code {old_code[:12]} -> {new.code[:12]}: {code_change(node, old_code, ctx)}"
    if dry:
        return Acceptance(node, WOULD_ACCEPT, change)
    now = time.time()
    accepted = entry._replace(key=d.key, components=new, created=now, accepted={
        "by": who, "at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "from_key": entry.key, "old_code": old_code, "new_code": new.code})
    ctx.store.put_code_manifests({new.code: CodeManifest(ctx.code_items(node))})
    ctx.store.put_entry(accepted)
    ctx.store.put_head(keys.head_key(node.stage.id, node.set_name), Head(d.key, now, new, accepted.trace_id))
    return Acceptance(node, ACCEPTED, change)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
