"""The DAG as text for the terminal (`orch graph`), over manifest-shaped node rows, so a plan and a
past run print alike.

Rows are `runs.manifest.node_row` dicts: `id`, `stage`, `stage_id`, `param_set`, `status`, `reason`,
`inputs` as [input, producer id, output, (set)], and `key`/`trace` for the entry a node used.

Up to drawing.NODE_LIMIT nodes, one tree per parameter set, read like `cargo tree`: a node no other
node of its set consumes is a root, and a node's children are its inputs (`model ← train`). A DAG is
not a tree: a node reached again (a diamond's shared producer, an aggregate's inputs) is one line
marked (*), never its subtree again. A computation shared by several sets (same stage, key and
trace: drawing.computations, the rule the picture uses) is one node, `make_data ×4 sets`, expanded
the first time it is reached. Many already shown inputs of one stage (an aggregate's) are one line.

Above the limit (a 200-point sweep), one tree per stage: its inputs by stage, then its nodes grouped
by state and reason with counts and the first few set names, so the output grows with the number of
stages and reasons, not of nodes. Every pass is a loop (the depth-first walk keeps its own stack):
a 10,000-node chain never recurses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import click

from ..core.graph import AGGREGATE_SET
from ..core.status import Status
from .drawing import NODE_LIMIT, STATUS_ORDER, aggregate_reason, computations

SETS_SHOWN = 3  # set names listed under a group of a stage's nodes
GROUPS_SHOWN = 5  # (state, reason) groups shown per stage; the rest are summed up in one line
COLLAPSE = 3  # already shown inputs of one stage and name, from this many on, are one line
ALIGN_MAX = 56  # the state column starts here at most
SEEN = "(*)"

WORDS = {Status.RUN: "will run"}
STYLES = {
    Status.FAILED: {"fg": "red", "bold": True},
    Status.RAN: {"fg": "cyan"},
    Status.RUN: {"fg": "yellow", "bold": True},
    Status.PENDING: {"fg": "yellow"},
    Status.SKIPPED: {"fg": "bright_black"},
    Status.CACHED: {"fg": "green"},
}

Segments = list[tuple[str, str | None]]  # (text, status whose colour it takes, or None)


@dataclass(slots=True)
class Line:
    left: str  # tree characters and the node; the state column is aligned after it
    right: Segments  # empty: a line of its own (set names), outside the alignment


@dataclass
class _Rows:
    nodes: list[dict]  # by id: a topological order (core/graph.py)
    by_id: dict[int, dict]
    ident: dict[int, object]  # node id -> its computation (shared ones: several nodes)
    members: dict[object, list[dict]]
    titles: dict[str, str]  # stage id -> the name shown
    set_names: list[str]  # the parameter sets, aggregate excluded

    def title(self, n: dict) -> str:
        return self.titles[n.get("stage_id") or n["stage"]]


def render(nodes: list[dict], stages: bool | None = None, colour: bool = False) -> str:
    """The text of the DAG of `nodes`: one tree per parameter set, or one per stage (`stages`; None
    chooses per stage above NODE_LIMIT nodes), then a summary line. `colour`: ANSI colours by state
    (only for a terminal)."""
    rows = _index(nodes)
    if stages is None:
        stages = len(rows.nodes) > NODE_LIMIT
    blocks = _by_stage(rows) if stages else _by_set(rows)
    paint = _painter(colour)
    out = []
    for header, lines in blocks:
        if header:
            out.append(click.style(header, bold=True) if colour else header)
        out.extend(_aligned(lines, paint))
        out.append("")
    notes = [summary(rows.nodes)]
    if stages:
        notes.append(f"one tree per stage ({len(rows.nodes):,} nodes; --nodes prints one tree per parameter set)")
    elif any(SEEN in line.left for _, lines in blocks for line in lines):
        notes.append(f"{SEEN}: shown above")
    return "\n".join(out + notes) + "\n"


def summary(nodes: list[dict]) -> str:
    """`13 nodes in 4 parameter sets: 3 will run, 4 pending, 6 cached`."""
    sets = len({n["param_set"] for n in nodes if n["param_set"] != AGGREGATE_SET})
    head = f"{len(nodes):,} node{'s' if len(nodes) != 1 else ''} in {sets:,} parameter set{'s' if sets != 1 else ''}"
    return head + (": " + "".join(text for text, _ in _by_status(nodes)) if nodes else "")


# -- one tree per parameter set -----------------------------------------------------------------------

def _by_set(rows: _Rows) -> list[tuple[str, list[Line]]]:
    consumed: set[int] = set()  # nodes a node of their own set consumes: not roots
    for n in rows.nodes:
        for edge in n.get("inputs", ()):
            p = rows.by_id.get(edge[1])
            if p is not None and p["param_set"] == n["param_set"]:
                consumed.add(p["id"])
    blocks: dict[str, list[dict]] = {}
    for n in rows.nodes:
        blocks.setdefault(n["param_set"], []).append(n)
    shown: set = set()
    out = []
    for set_name, members in blocks.items():
        lines: list[Line] = []
        stack = [(n["id"], "", "", "") for n in reversed(members) if n["id"] not in consumed]
        while stack:  # (node, edge label, this line's tree prefix, its children's), depth first
            node_id, label, head, indent = stack.pop()
            if isinstance(node_id, list):  # many shown inputs of one stage, one line
                lines.append(_many_line(rows, node_id, label, head))
                continue
            n = rows.by_id[node_id]
            ident = rows.ident[node_id]
            left = head + (f"{label} ← " if label else "") + _name(rows, n, set_name)
            if ident in shown:
                lines.append(Line(f"{left} {SEEN}", [(_word(n), n.get("status"))]))
                continue
            shown.add(ident)
            lines.append(Line(left, _state(rows, n)))
            children = _children(rows, n, shown)
            for k in range(len(children) - 1, -1, -1):
                child, child_label = children[k]
                last = k == len(children) - 1
                stack.append((child, child_label, indent + ("└── " if last else "├── "),
                              indent + ("    " if last else "│   ")))
        out.append((set_name, lines))
    return out


def _children(rows: _Rows, n: dict, shown: set) -> list[tuple[int | list[int], str]]:
    """(producer id, edge label) per producer of `n`, in input order; inputs from one producer are one
    child (`model, stats ← train`). Already shown producers of one stage and label, COLLAPSE or more
    of them (an aggregate's inputs), are one child: (their ids, label)."""
    labels: dict[int, list[str]] = {}
    for edge in n.get("inputs", ()):
        if edge[1] in rows.by_id:
            names = labels.setdefault(edge[1], [])  # an input is named as the output it is (graph.py)
            if edge[0] not in names:
                names.append(edge[0])
    children = [(p, ", ".join(names)) for p, names in labels.items()]
    alike: dict[tuple, list[int]] = {}
    for p, label in children:
        if rows.ident[p] in shown:
            alike.setdefault((rows.title(rows.by_id[p]), label), []).append(p)
    many = {ids[0]: ids for ids in alike.values() if len(ids) >= COLLAPSE}
    folded = {p for ids in many.values() for p in ids[1:]}
    return [(many.get(p, p), label) for p, label in children if p not in folded]


def _many_line(rows: _Rows, ids: list[int], label: str, head: str) -> Line:
    nodes = [rows.by_id[i] for i in ids]
    sets = len({n["param_set"] for n in nodes})
    return Line(f"{head}{label} ← {rows.title(nodes[0])} ×{sets} sets {SEEN}", _by_status(nodes))


def _name(rows: _Rows, n: dict, set_name: str) -> str:
    """The stage, with `×N sets` for a shared computation, or `[set]` for another set's node."""
    members = rows.members[rows.ident[n["id"]]]
    if len(members) > 1:
        return f"{rows.title(n)} ×{len({m['param_set'] for m in members})} sets"
    return rows.title(n) + (f" [{n['param_set']}]" if n["param_set"] != set_name else "")


# -- one tree per stage -------------------------------------------------------------------------------

def _by_stage(rows: _Rows) -> list[tuple[str, list[Line]]]:
    stages: dict[str, list[dict]] = {}
    for n in rows.nodes:
        stages.setdefault(n.get("stage_id") or n["stage"], []).append(n)
    lines: list[Line] = []
    for members in stages.values():
        idents = list(dict.fromkeys(rows.ident[n["id"]] for n in members))
        n = members[0]
        if len(idents) == 1:  # one node, or one computation shared by every set
            sets = len({m["param_set"] for m in members})
            lines.append(Line(rows.title(n) + (f" ×{sets} sets" if len(members) > 1 else f" [{n['param_set']}]"),
                              _state(rows, n)))
            groups = []
        else:
            lines.append(Line(rows.title(n), [(f"{len(members):,} nodes: ", None), *_by_status(members)]))
            groups = _groups(rows, members)
        children: list[tuple[str, list[str] | None, Segments]] = [(text, None, []) for text in _stage_inputs(rows, members)]
        children += groups
        for k, (text, names, right) in enumerate(children):
            last = k == len(children) - 1
            lines.append(Line(("└── " if last else "├── ") + text, right))
            if names:
                lines.append(Line(("    " if last else "│   ") + "  " + _set_list(names), []))
    return [("", lines)]


def _stage_inputs(rows: _Rows, members: list[dict]) -> list[str]:
    """`data ← make_data` per input of the stage; an aggregate's, `score ← evaluate ×200 sets`."""
    found: dict[tuple[str, str], set] = {}
    for n in members:
        for edge in n.get("inputs", ()):
            p = rows.by_id.get(edge[1])
            if p is not None:
                found.setdefault((edge[0], rows.title(p)), set()).add(p["param_set"])
    aggregate = all(n["param_set"] == AGGREGATE_SET for n in members)
    return [f"{text} ← {title}" + (f" ×{len(sets)} sets" if aggregate and len(sets) > 1 else "")
            for (text, title), sets in found.items()]


def _groups(rows: _Rows, members: list[dict]) -> list[tuple[str, list[str] | None, Segments]]:
    """The stage's nodes by (state, reason), most notable state first: per state its GROUPS_SHOWN
    biggest groups, then one line for the rest of that state's nodes (reasons that differ by set,
    each naming its own value). A group of one node is named by its set."""
    groups: dict[tuple, list[dict]] = {}
    for n in members:
        groups.setdefault((n.get("status", ""), _detail(rows, n)), []).append(n)
    by_status: dict[str, list[tuple]] = {}
    for g in sorted(groups, key=lambda g: -len(groups[g])):  # stable: ties keep their first appearance
        by_status.setdefault(g[0], []).append(g)
    out = []
    for status in _ordered(by_status):
        shown, rest = by_status[status][:GROUPS_SHOWN], by_status[status][GROUPS_SHOWN:]
        for g in shown:
            nodes = groups[g]
            right: Segments = [(_word(nodes[0]), status), (f" ({g[1]})" if g[1] else "", None)]
            computations_ = len({rows.ident[n["id"]] for n in nodes})
            if computations_ < len(nodes):
                right.append((", one computation" if computations_ == 1 else f", {computations_} computations", None))
            if len(nodes) == 1:
                out.append((nodes[0]["param_set"], None, right))
            else:
                out.append((_how_many(nodes), [n["param_set"] for n in nodes], right))
        if rest:
            nodes = [n for g in rest for n in groups[g]]
            right = [(_word(nodes[0]), status), (f" ({len(rest):,} other reason{'s' if len(rest) > 1 else ''})", None)]
            out.append((_how_many(nodes), [n["param_set"] for n in nodes], right))
    return out


def _how_many(nodes: list[dict]) -> str:
    sets = len({n["param_set"] for n in nodes})
    return f"{sets:,} set{'s' if sets != 1 else ''}" if sets == len(nodes) else f"{len(nodes):,} nodes in {sets:,} sets"


def _by_status(nodes: list[dict]) -> Segments:
    """`3 will run, 1 cached`, each count in its state's colour."""
    counts = Counter(n.get("status", "") for n in nodes)
    out: Segments = []
    for s in _ordered(counts):
        out += [(", ", None)] if out else []
        out.append((f"{counts[s]:,} {WORDS.get(s, s) or '?'}", s))
    return out


def _set_list(names: list[str]) -> str:
    names = list(dict.fromkeys(names))
    more = len(names) - SETS_SHOWN
    return ", ".join(names[:SETS_SHOWN]) + (f" … and {more:,} more" if more > 0 else "")


# -- shared ---------------------------------------------------------------------------------------------

def _index(nodes: list[dict]) -> _Rows:
    if any(a["id"] > b["id"] for a, b in zip(nodes, nodes[1:])):
        nodes = sorted(nodes, key=lambda n: n["id"])
    shared = computations(nodes)
    ident = {n["id"]: shared.get(n["id"], n["id"]) for n in nodes}
    members: dict[object, list[dict]] = {}
    for n in nodes:
        members.setdefault(ident[n["id"]], []).append(n)
    ids: dict[str, str] = {}
    for n in nodes:
        ids.setdefault(n.get("stage_id") or n["stage"], n["stage"])
    clash = Counter(ids.values())  # two stages of one name: tell them apart by module
    titles = {sid: sid if clash[name] > 1 else name for sid, name in ids.items()}
    set_names = list(dict.fromkeys(n["param_set"] for n in nodes if n["param_set"] != AGGREGATE_SET))
    return _Rows(nodes, {n["id"]: n for n in nodes}, ident, members, titles, set_names)


def _word(n: dict) -> str:
    status = n.get("status", "")
    return WORDS.get(status, status) or "?"


def _detail(rows: _Rows, n: dict) -> str:
    """Why: the reason it runs (an aggregate's by parameter set name), a failure's error, a skip's cause."""
    if n.get("status") == Status.FAILED and n.get("error"):
        return n["error"].partition("\n")[0]
    if n.get("status") == Status.SKIPPED and n.get("skipped_because"):
        return f"upstream {n['skipped_because']} failed"
    reason = n.get("reason") or ""
    return aggregate_reason(reason, rows.set_names) if n["param_set"] == AGGREGATE_SET else reason


def _state(rows: _Rows, n: dict) -> Segments:
    detail = _detail(rows, n)
    return [(_word(n), n.get("status")), (f" ({detail})" if detail else "", None)]


def _ordered(counts) -> list[str]:
    return [s for s in STATUS_ORDER if counts.get(s)] + sorted(s for s in counts if s not in STATUS_ORDER)


def _painter(colour: bool):
    if not colour:
        return lambda text, status: text
    return lambda text, status: click.style(text, **STYLES[status]) if status in STYLES and text else text


def _aligned(lines: list[Line], paint) -> list[str]:
    """The state column after the widest tree part (at most ALIGN_MAX), coloured by `paint`."""
    width = min(max((len(line.left) for line in lines if line.right), default=0), ALIGN_MAX)
    out = []
    for line in lines:
        if not line.right:
            out.append(line.left)
            continue
        out.append(line.left.ljust(width) + "  " + "".join(paint(text, status) for text, status in line.right))
    return out
