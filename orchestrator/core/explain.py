"""Why a node must run: every difference from the previous computation of the *same stage on the same
parameter set* (never a sibling sweep point's), or that there is none ("new parameter set",
"never ran"). One sentence, computed once by the planner and shown the same everywhere: the run's
console, the manifest, the report and `orch why`.

The previous computation is the node's head (written when it last ran: key, components, entry), or,
for a node that was only ever served by another set's identical computation (a dataset shared by a
sweep), its row in the latest recent run that had it.
"""

from __future__ import annotations

from ..params import is_ignored, resolve
from ..store import Entry, KeyComponents
from . import keys
from .graph import Node

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from .plan import PlanContext

#: How many recent runs are read to find a node's previous computation when it has no head.
RECENT_RUNS = 5
#: At most this many differences are spelled out; the rest are counted.
SHOWN = 6


def why_miss(node: Node, comp: KeyComponents, key: str, params: dict, ctx: PlanContext) -> str:
    """The reason `node` (current components `comp`, key `key`) has no valid entry."""
    prev_key, prev_comp, prev_entry = _previous(node, ctx)
    if prev_key is None:
        return "new parameter set" if _siblings_ran(node, ctx) else "never ran"
    changes = component_changes(node, prev_comp, comp, ctx) if prev_comp is not None else []
    if prev_entry is not None:
        changes += _trace_changes(node, prev_entry, params, ctx)
    if changes:
        shown = changes[:SHOWN] + ([f"and {len(changes) - SHOWN} more"] if len(changes) > SHOWN else [])
        return "; ".join(shown)
    if prev_entry is not None:
        missing = ctx.store.missing_outputs(prev_entry)
        if missing:
            return f"stored output {', '.join(missing)} is missing or damaged"
    if prev_comp is not None and prev_key != keys.node_key(prev_comp):
        return "orch's cache key format changed since the last run"
    return "its cache entry is gone or unreadable (orch cache gc/verify, by hand, or damaged)"


def _previous(node: Node, ctx: PlanContext) -> tuple[str | None, KeyComponents | None, Entry | None]:
    head = ctx.store.get_head(keys.head_key(node.stage.id, node.set_name), label=node.label)
    if head is not None:
        entry = ctx.store.get_entry(head.key, head.trace_id, label=node.label) if head.trace_id else None
        if entry is None:  # a head of orch 0.1.0: this set's newest entry under that key, if any
            entry = next((e for e in ctx.store.get_entries(head.key, label=node.label)
                          if e.param_set == node.set_name), None)
        return head.key, head.components, entry
    row = ctx.previous_rows().get((node.stage.id, node.set_name))
    if row is None or not row.get("key"):
        return None, None, None
    entry = ctx.store.get_entry(row["key"], row["trace"], label=node.label) if row.get("trace") else None
    return row["key"], entry.components if entry is not None else None, entry


def _siblings_ran(node: Node, ctx: PlanContext) -> bool:
    """Whether this stage ran for another parameter set of the experiment (then the set is new)."""
    rows = ctx.previous_rows()
    return any(stage == node.stage.id for stage, _ in rows)


def component_changes(node: Node, old: KeyComponents, new: KeyComponents, ctx: PlanContext,
                      code: bool = True) -> list[str]:
    """What differs between two keys' components, in words (`code=False`: all but the code)."""
    changes = []
    if old.version != new.version:
        changes.append(f"version {old.version!r} -> {new.version!r}")
    if code and old.code != new.code:
        changes.append(code_change(node, old.code, ctx))
    if old.decl != new.decl:
        changes.append("declaration changed (inputs, outputs or cachers)")
    if new.sets is not None:  # an aggregate: one line for the sets, one for their inputs
        changes += _aggregate_input_changes(old, new)
    else:
        for name in sorted(set(old.inputs) | set(new.inputs)):
            if old.inputs.get(name) != new.inputs.get(name):
                both = name in old.inputs and name in new.inputs
                changes.append(f"input {name} changed" if both else f"input {name} added/removed")
    return changes


def _aggregate_input_changes(old: KeyComponents, new: KeyComponents) -> list[str]:
    out = []
    old_sets, new_sets = set(old.sets or ()), set(new.sets or ())
    if old_sets != new_sets:
        added, removed = sorted(new_sets - old_sets), sorted(old_sets - new_sets)
        out.append("parameter sets: " + " ".join([*(f"+{s}" for s in added), *(f"-{s}" for s in removed)]))
    changed: dict[str, set[str]] = {}
    for name in set(old.inputs) & set(new.inputs):
        if old.inputs[name] != new.inputs[name]:
            input_name, _, set_name = name.partition("@")
            changed.setdefault(input_name, set()).add(set_name)
    for input_name, sets in sorted(changed.items()):
        out.append(f"input {input_name} changed for {_count(sets, 'set')}" if len(sets) > 1
                   else f"input {input_name} changed for set {next(iter(sets))}")
    return out


def _trace_changes(node: Node, entry: Entry, params: dict, ctx: PlanContext) -> list[str]:
    """Every recorded read and traced file of the previous computation that differs now."""
    ignore = node.stage.ignore
    changes, by_set = [], {}
    for path, read in entry.reads.items():
        if is_ignored(path, ignore) or ctx.read_hash(node.set_name, params, path, ignore) == read.hash:
            continue
        set_name, rel = _aggregate_read(path) if node.stage.kind == "aggregate" else (None, path)
        if set_name is not None:
            by_set.setdefault(rel, []).append(set_name)
        else:
            now = resolve(params, path)
            changes.append(f"parameter {path or '<all>'} changed: {keys.shown(read.shown)} -> {keys.shown(now)}")
    for rel, sets in sorted(by_set.items()):
        where = f"set {sets[0]}" if len(sets) == 1 else _count(sets, "set")
        changes.append(f"parameter {rel} changed in {where}")
    for name, digest in entry.files.items():
        now = ctx.file_hash(name)
        if now != digest:
            changes.append(f"{keys.describe_traced(name)} {'changed' if now else 'is gone'}")
    return changes


def _aggregate_read(path: str) -> tuple[str | None, str]:
    """An aggregate reads `<set key>.<path>` (params.set_key escapes "." and "%" in set names)."""
    head, _, rest = path.partition(".")
    if not rest:
        return None, path
    return head.replace("%2E", ".").replace("%25", "%"), rest


def _count(items, word: str) -> str:
    return f"{len(items)} {word}s"


def code_change(node: Node, old_code: str, ctx: PlanContext) -> str:
    """Which functions of which files changed, when the old fingerprint's manifest is known."""
    generic = "code changed (the stage or a project function it uses)"
    old_manifest = ctx.store.get_code_manifest(old_code)
    if old_manifest is None:
        return generic
    old, new = old_manifest.items, ctx.code_items(node)
    changed = sorted(n for n in set(old) | set(new) if (old.get(n) or [None])[0] != (new.get(n) or [None])[0])
    by_file: dict[str, list[str]] = {}
    for name in changed:
        where = (new.get(name) or old.get(name))[1] or "?"
        by_file.setdefault(where, []).append(name.rpartition(":")[2] or name)
    if not by_file:
        return generic
    shown = [f"{where} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" for where, names in by_file.items()]
    more = f"; and {len(shown) - 3} more files" if len(shown) > 3 else ""
    return "code changed: " + "; ".join(shown[:3]) + more


def acceptance_note(entry: Entry) -> str:
    """Why a hit under new code is a hit: `orch accept` said so (empty for an ordinary hit)."""
    a = entry.accepted
    if not a:
        return ""
    return (f"code change accepted by {a.get('by', '?')} at {a.get('at', '?')} "
            f"(code {a.get('old_code', '?')[:12]} -> {a.get('new_code', '?')[:12]})")
