"""The DAG picture, laid out in pure Python: SVG for the run report and `orch graph -o`, DOT for Graphviz.

Input is manifest-shaped node dicts (`id`, `stage`, `stage_id`, `param_set`, `status`, `reason`, `inputs`
as [input, producer id, output, (set)]), so a past run and a plan are drawn alike. No graphviz is
needed: layers by longest path from the sources, order within a layer by barycenter sweeps, curved
edges under the boxes. Every pass is a loop over the topologically ordered node list (no recursion),
and a graph of more than NODE_LIMIT nodes is drawn one box per stage, with counts by status.

A computation shared by several parameter sets (make_data reading only `data.*` in a sweep over
`train.lr`) is one box, `×4 sets`: nodes are one computation when their rows show the same stage,
key, trace (the parameters read, with their values, and the files tracked) and stored outputs. The
key alone does not say it (it covers code and inputs, not the parameters read: the train nodes of a
sweep over train.lr share a key), so a node whose row does not show its trace keeps a box of its
own: no key yet, failed, skipped, no cacher (it runs per set), and the nodes of a plan that will run
(`orch graph`; cached ones name their entry's trace and are grouped).
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from operator import gt

from ..core.graph import AGGREGATE_SET
from ..core.status import Status
from ..params import set_key

NODE_LIMIT = 60  # up to this many nodes every node is drawn; above it, one box per stage
DRAW_LIMIT = 3000  # boxes: beyond this a picture is no longer readable (nor cheap); none is drawn

# status -> (fill, stroke); past runs: ran/cached/failed/skipped; plans: run/pending/cached
COLOURS = {
    Status.FAILED: ("#fde0de", "#d0342c"),
    Status.RAN: ("#dcf3e3", "#2e9e5b"),
    Status.RUN: ("#fff0d2", "#dd8f0b"),
    Status.PENDING: ("#fdf8e6", "#c4a239"),
    Status.SKIPPED: ("#f1f1f1", "#9a9a9a"),
    Status.CACHED: ("#e7edf5", "#6f849e"),
}
UNKNOWN = ("#ffffff", "#999999")
STATUS_ORDER = tuple(COLOURS)  # also the order of precedence for a stage box's colour
DASHED = {Status.SKIPPED, Status.PENDING}
LABELS = {Status.RUN: "will run", Status.PENDING: "pending on upstream"}

_CHAR_W, _SUB_W = 7.3, 6.7  # px per character of the 12 px / 11 px monospace labels
_BOX_H, _STAGE_BOX_H, _GAP_X, _GAP_Y, _GAP_WAYPOINT, _MARGIN, _LEGEND_H = 38, 46, 56, 14, 8, 16, 26
_MAX_TITLE, _MAX_SUB = 34, 40
_TIP_SETS = 12  # parameter sets listed in the tooltip of a shared computation
FIT_SCALE = 0.5  # in the report a picture shrinks to the page's width down to this scale, then scrolls
_ONE_COMPUTATION = (Status.RAN, Status.CACHED)  # a run's rows of these show the trace


def escape(s: str) -> str:
    """html.escape(s): the same replacements in the same order, without importing html (which
    builds its entity table and compiles a regular expression: ~8 M instructions, every run)."""
    if s.isalnum() or not ("&" in s or "<" in s or ">" in s or '"' in s or "'" in s):  # most text: nothing
        return s
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;")


# Box and Picture are plain classes, not dataclasses: defining a dataclass costs 2-3 M instructions
# (its methods are generated and compiled at import), and every run writes a report.


class Box:
    __slots__ = ("title", "subtitle", "status", "tooltip", "counts", "layer", "x", "y", "w")

    def __init__(self, title: str, subtitle: str, status: str, tooltip: str, counts: dict[str, int] | None = None):
        self.title, self.subtitle, self.status, self.tooltip = title, subtitle, status, tooltip
        self.counts = {} if counts is None else counts  # stage boxes: nodes by status
        self.layer = 0
        self.x = self.y = self.w = 0.0


class Picture:
    def __init__(self, boxes: list[Box], edges: list[tuple[int, int, str]], stages: bool, nodes: int):
        self.boxes = boxes
        self.edges = edges  # (from box, to box, artifact names)
        self.stages = stages  # one box per stage
        self.nodes = nodes  # how many nodes the boxes stand for
        self.routes: dict[int, list[tuple[float, float, float]]] = {}  # edge -> waypoints (x0, x1, y)
        self.width = self.height = 0.0


def build(nodes: list[dict], stages: bool | None = None) -> Picture:
    """Boxes and edges for `nodes`; `stages=None` chooses stage boxes above NODE_LIMIT nodes."""
    if stages is None:
        stages = len(nodes) > NODE_LIMIT
    ids = [n["id"] for n in nodes]
    if any(map(gt, ids, ids[1:])):  # (a generator over 10,000 pairs costs ~10x this)
        nodes = sorted(nodes, key=lambda n: n["id"])  # ids are a topological order (graph.py)
    return _stage_picture(nodes) if stages else _node_picture(nodes)


def _node_picture(nodes: list[dict]) -> Picture:
    """One box per computation: a node, or the nodes of several parameter sets that are one
    computation (see computations)."""
    computation = computations(nodes)
    groups: list[list[dict]] = [[n] for n in nodes] if not computation else []
    box_of: dict[int, int] = {n["id"]: i for i, n in enumerate(nodes)} if not computation else {}
    seen: dict[tuple, int] = {}
    for n in nodes if computation else ():
        ident = computation.get(n["id"])
        g = seen.get(ident) if ident is not None else None
        if g is None:
            g = len(groups)
            groups.append([])
            if ident is not None:
                seen[ident] = g
        groups[g].append(n)
        box_of[n["id"]] = g
    if len(groups) < len(nodes):  # a shared box sits where its first node was: order the boxes again
        order = _topological(groups, box_of)
        groups = [groups[g] for g in order]
        box_of = {n["id"]: i for i, members in enumerate(groups) for n in members}
    set_names = list(dict.fromkeys(n["param_set"] for n in nodes))
    boxes = [_node_box(members, set_names) for members in groups]
    return Picture(boxes, _edges(nodes, box_of), False, len(nodes))


def computations(nodes: list[dict]) -> dict[int, tuple]:
    """Node id -> what makes its computation, for the nodes that may share one and whose rows show
    all of it: stage, key, the trace (the parameters read with their values, the files tracked) and
    the stored outputs. Only a row that ran or came from the cache in a run, with stored outputs,
    has its trace in `reads`; and only nodes sharing a stage and key are compared further. The text
    tree (tree.py) groups by the same rule, so the picture and the terminal agree."""
    by_key: dict[tuple, list[dict]] = {}
    for n in nodes:
        if n.get("key") and n.get("trace"):  # the entry it used: key + trace name one computation exactly
            by_key.setdefault((n.get("stage_id") or n["stage"], n["key"], n["trace"]), []).append(n)
        elif n.get("key") and n.get("status") in _ONE_COMPUTATION and n.get("outputs"):
            by_key.setdefault((n.get("stage_id") or n["stage"], n["key"]), []).append(n)
    return {n["id"]: (*key, _canonical(n.get("reads")), _canonical(n.get("files")), _canonical(n.get("outputs")))
            for key, members in by_key.items() if len(members) > 1 for n in members}


def _canonical(value) -> str:
    return json.dumps(value or {}, sort_keys=True, default=str)


def _topological(groups: list[list[dict]], box_of: dict[int, int]) -> list[int]:
    """Boxes with producers before consumers, otherwise in order of first appearance (Kahn's
    algorithm taking the earliest ready box); boxes on a cycle, if any, follow in their order."""
    succs: list[set[int]] = [set() for _ in groups]
    waiting = [0] * len(groups)
    for g, members in enumerate(groups):
        for n in members:
            for edge in n.get("inputs", ()):
                src = box_of.get(edge[1])
                if src is not None and src != g and g not in succs[src]:
                    succs[src].add(g)
                    waiting[g] += 1
    ready = [g for g, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        g = heapq.heappop(ready)
        order.append(g)
        for d in succs[g]:
            waiting[d] -= 1
            if waiting[d] == 0:
                heapq.heappush(ready, d)
    if len(order) < len(groups):
        placed = set(order)
        order += [g for g in range(len(groups)) if g not in placed]
    return order


def _node_box(members: list[dict], set_names: list[str]) -> Box:
    n = members[0]
    if len(members) == 1:
        status = n.get("status", "")
        return Box(n["stage"], n["param_set"], status, _node_tip(n, f"{n['stage']} [{n['param_set']}]", set_names))
    counts = dict(Counter(m.get("status", "") for m in members))
    status = next(st for st in (*STATUS_ORDER, *counts) if counts.get(st))
    sets = list(dict.fromkeys(m["param_set"] for m in members))
    shared = f"×{len(sets)} sets" if len(sets) == len(members) else f"×{len(members)} nodes, {len(sets)} sets"
    lines = [f"{n['stage']}: one computation, shared by {len(sets)} parameter sets"]
    lines += [_node_tip(m, f"[{m['param_set']}]", set_names) for m in members[:_TIP_SETS]]
    if len(members) > _TIP_SETS:
        lines.append(f"… and {len(members) - _TIP_SETS} more")
    return Box(n["stage"], shared, status, "\n".join(lines), counts=counts)


def _node_tip(n: dict, head: str, set_names: list[str]) -> str:
    status = n.get("status", "")
    tip = f"{head}\n{LABELS.get(status, status)}"
    if n.get("reason"):
        reason = aggregate_reason(n["reason"], set_names) if n["param_set"] == AGGREGATE_SET else n["reason"]
        tip += f": {reason}"
    if n.get("error"):
        tip += f"\n{n['error']}"
    return tip


def aggregate_reason(reason: str, set_names) -> str:
    """An aggregate's reason, `parameter <set_key(S)>.<path> changed` (an aggregate reads its sets'
    parameters under set_key), as `parameter set S: <path> changed`, for the run's own set names."""
    if "parameter " not in reason:
        return reason
    for name in set_names:
        reason = reason.replace(f"parameter {set_key(name)}.", f"parameter set {name}: ")
    return reason


def _stage_picture(nodes: list[dict]) -> Picture:
    """One box per stage (in order of first appearance, a topological order whenever the stage graph
    is acyclic), coloured by its most notable status, with its nodes counted by status."""
    slot: dict[str, int] = {}
    names: list[str] = []
    counts: list[dict[str, int]] = []
    sets: list[set] = []
    index: dict[int, int] = {}  # node id -> its stage's box
    for n in nodes:
        stage = n.get("stage_id") or n["stage"]
        i = slot.get(stage)
        if i is None:
            i = slot[stage] = len(names)
            names.append(n["stage"])
            counts.append({})
            sets.append(set())
        status = n.get("status", "")
        c = counts[i]
        c[status] = c.get(status, 0) + 1
        sets[i].add(n["param_set"])
        index[n["id"]] = i
    shared = Counter(names) if len(set(names)) < len(names) else {}
    boxes = []
    for key, name, c, in_sets in zip(slot, names, counts, sets):
        if len(c) == 1:  # one status (most boxes): what the lines below give, without their generators
            ((status, count),) = c.items()
            summary = f"{count} {status}"
        else:
            status = next((st for st in STATUS_ORDER if c.get(st)), next(iter(c)))
            summary = ", ".join(f"{c[st]} {st}" for st in _ordered(c))
        title = key if shared.get(name, 1) > 1 else name  # two stages of one name: tell them apart by module
        sets_text = f"{len(in_sets)} parameter set" + ("s" if len(in_sets) != 1 else "")
        boxes.append(Box(title, summary, status, f"{key}\n{sets_text}: {summary}", counts=c))
    return Picture(boxes, _edges(nodes, index), True, len(nodes))


def _edges(nodes: list[dict], box_of: dict) -> list[tuple[int, int, str]]:
    """Distinct (producer box, consumer box) pairs (`box_of`: node id -> box), labelled with the
    artifacts that flow along them."""
    labels: dict[tuple[int, int], list[str]] = {}
    for n in nodes:
        inputs = n.get("inputs")
        if not inputs:
            continue
        dst = box_of[n["id"]]
        for edge in inputs:
            src = box_of.get(edge[1])
            if src is None:
                continue
            names = labels.get((src, dst))
            if names is None:
                labels[(src, dst)] = [edge[2]]
            elif edge[2] not in names:
                names.append(edge[2])
    return [(s, d, ", ".join(names)) for (s, d), names in labels.items()]


def _ordered(counts: dict[str, int]) -> list[str]:
    if len(counts) == 1:  # most boxes and rows: one status (called for every stage box and table row)
        (status,) = counts
        return [status] if counts[status] or status not in COLOURS else []
    return [s for s in STATUS_ORDER if counts.get(s)] + sorted(s for s in counts if s not in COLOURS)


def layout(pic: Picture, sweeps: int = 4) -> Picture:
    """Layers by longest path from a source; a long edge gets a waypoint in every layer it crosses
    (so it is ordered and spaced like a box and runs between boxes, not through them); order within
    layers by barycenter sweeps; then coordinates."""
    n = len(pic.boxes)
    forward = [(e, s, d) for e, (s, d, _) in enumerate(pic.edges) if s < d]  # boxes are in topological order;
    direct: list[list[int]] = [[] for _ in range(n)]  # other edges (stage cycles) are drawn, not layered
    for _, s, d in forward:
        direct[d].append(s)
    layer = [0] * n
    for i, into in enumerate(direct):
        if len(into) == 1:  # a chain's box (no generator per box: every report draws up to 3,000)
            layer[i] = 1 + layer[into[0]]
        elif into:
            layer[i] = 1 + max(layer[p] for p in into)
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    hops: dict[int, list[int]] = {}
    for e, s, d in forward:
        prev = s
        for li in range(layer[s] + 1, layer[d]):
            v = len(layer)
            layer.append(li)
            preds.append([prev])
            succs.append([])
            succs[prev].append(v)
            hops.setdefault(e, []).append(v)
            prev = v
        preds[d].append(prev)
        succs[prev].append(d)
    layers: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for v, li in enumerate(layer):
        layers[li].append(v)
    _order(layers, preds, succs, sweeps)

    box_h = _STAGE_BOX_H if pic.stages else _BOX_H
    size = [box_h] * n + [0] * (len(layer) - n)
    y = _heights(layers, preds, succs, size)
    top = min([c - h / 2 for c, h in zip(y, size)], default=0.0) - _MARGIN - _LEGEND_H
    bottom = max([c + h / 2 for c, h in zip(y, size)], default=0.0)
    x, columns, boxes = float(_MARGIN), [], pic.boxes
    for row in layers:
        if len(row) == 1:  # (a layer holds at least one box: waypoints only fill the layers between boxes)
            width = _box_width(boxes[row[0]])
        else:
            width = max(_box_width(boxes[v]) for v in row if v < n)
        columns.append((x, width))
        for v in row:
            if v < n:
                box = boxes[v]
                box.layer, box.x, box.y, box.w = layer[v], x, y[v] - box_h / 2 - top, width
        x += width + _GAP_X
    pic.routes = {e: [(columns[layer[v]][0], sum(columns[layer[v]]), y[v] - top) for v in vs] for e, vs in hops.items()}
    pic.width = max(x - _GAP_X + _MARGIN, 360)
    pic.height = bottom - top + _MARGIN + (24 if any(s >= d for s, d, _ in pic.edges) else 0)
    return pic


def _order(layers: list[list[int]], preds: list[list[int]], succs: list[list[int]], sweeps: int) -> None:
    """Barycenter heuristic: sort each layer by the mean position of its neighbours in the layer
    before (down sweeps) or after (up sweeps); ties keep the current order."""
    pos = [0.0] * (len(preds))

    def place(row: list[int]) -> None:
        mid = (len(row) - 1) / 2
        for k, v in enumerate(row):
            pos[v] = k - mid

    for row in layers:
        place(row)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        near = preds if down else succs
        for row in (layers[1:] if down else layers[-2::-1]):
            if len(row) == 1:  # alone in its layer (a chain of stages): sorted as it is, placed at 0.0 as it is
                continue
            bary = {v: (sum(pos[j] for j in near[v]) / len(near[v]) if near[v] else pos[v]) for v in row}
            row.sort(key=lambda v: (bary[v], pos[v]))
            place(row)


def _heights(layers: list[list[int]], preds: list[list[int]], succs: list[list[int]], size: list[int]) -> list[float]:
    """Vertical centres: each box (or waypoint) as close as its layer's order allows to the mean of
    its neighbours (down, up, down sweeps), neighbours in a layer kept apart by their sizes."""
    y = [0.0] * len(size)

    def gap(a: int, b: int) -> float:
        return (size[a] + size[b]) / 2 + (_GAP_Y if size[a] and size[b] else _GAP_WAYPOINT)

    for row in layers:
        for k in range(1, len(row)):
            y[row[k]] = y[row[k - 1]] + gap(row[k - 1], row[k])
        mid = y[row[-1]] / 2
        for v in row:
            y[v] -= mid
    for sweep in range(3):
        down = sweep % 2 == 0
        near = preds if down else succs
        for row in (layers[1:] if down else layers[-2::-1]):
            if len(row) == 1:  # alone in its layer: where its neighbours want it (the shift below is 0.0)
                v = row[0]
                around = near[v]
                if len(around) == 1:
                    y[v] = 0.0 + y[around[0]]  # what sum() / 1 gives, -0.0 included
                elif around:
                    y[v] = sum(y[j] for j in around) / len(around)
                continue
            want = [sum(y[j] for j in near[v]) / len(near[v]) if near[v] else y[v] for v in row]
            placed = want[:1]
            for k in range(1, len(row)):
                placed.append(max(want[k], placed[-1] + gap(row[k - 1], row[k])))
            shift = sum(p - w for p, w in zip(placed, want)) / len(row)
            for v, p in zip(row, placed):
                y[v] = p - shift
    return y


def _box_width(box: Box) -> float:
    return max(90.0, min(len(box.title), _MAX_TITLE) * _CHAR_W + 18, min(len(box.subtitle), _MAX_SUB) * _SUB_W + 18)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def svg(pic: Picture, fit: bool = False) -> str:
    """A standalone SVG (also valid inline in HTML): a legend, edges beneath, boxes with tooltips.

    `fit` (inline in the report): as wide as its container, scaled through the viewBox, never wider
    than drawn nor narrower than FIT_SCALE of that (the container then scrolls sideways)."""
    if not pic.width:
        layout(pic)
    box_h = _STAGE_BOX_H if pic.stages else _BOX_H
    style = (f' style="width:100%;height:auto;max-width:{pic.width:.0f}px;min-width:{pic.width * FIT_SCALE:.0f}px"'
             if fit else "")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="orch-dag" width="{pic.width:.0f}" height="{pic.height:.0f}" '
        f'viewBox="0 0 {pic.width:.0f} {pic.height:.0f}"{style} font-family="ui-monospace,SFMono-Regular,Menlo,Consolas,'
        f'DejaVu Sans Mono,monospace">',
        '<defs><marker id="orch-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#8796a8"/></marker></defs>',
    ]
    out.append('<rect width="100%" height="100%" fill="#ffffff"/>')  # dark-themed viewers of the .svg
    out.append(_legend(pic))
    out.append('<g fill="none" stroke="#8796a8" stroke-width="1.2" stroke-opacity="0.75" marker-end="url(#orch-arrow)">')
    boxes, routes = pic.boxes, pic.routes
    for e, (s, d, label) in enumerate(pic.edges):
        a, b = boxes[s], boxes[d]
        if s < d:  # curves between columns, straight through the columns it crosses
            x, y = a.x + a.w, a.y + box_h / 2
            path = "M%.1f,%.1f" % (x, y)  # (%-formatting: each float formatted ~30% faster than in an f-string)
            for x0, x1, wy in routes.get(e, ()):
                path += _curve(x, y, x0, wy) + "L%.1f,%.1f" % (x1, wy)
                x, y = x1, wy
            path += _curve(x, y, b.x - 1, b.y + box_h / 2)
            extra = ""
        elif s == d:  # a stage feeding itself (the same stage called twice on a record)
            x1, y1 = a.x + a.w * 0.65, a.y
            path = f"M{x1:.1f},{y1:.1f}C{x1 + 10:.1f},{y1 - 22:.1f} {x1 - 40:.1f},{y1 - 22:.1f} {x1 - 30:.1f},{y1:.1f}"
            extra = ' stroke-dasharray="4 3"'
        else:  # an edge against the layer order (stages wired differently across parameter sets)
            x1, y1, x2, y2 = a.x + a.w / 2, a.y + box_h, b.x + b.w / 2, b.y + box_h
            low = max(y1, y2) + 24
            path = f"M{x1:.1f},{y1:.1f}C{x1:.1f},{low:.1f} {x2:.1f},{low:.1f} {x2:.1f},{y2 + 1:.1f}"
            extra = ' stroke-dasharray="4 3"'
        out.append(f'<path d="{path}"{extra}><title>{escape(label)}</title></path>')
    out.append("</g>")
    for box in boxes:
        out.append(_box(box, box_h, pic.stages))
    out.append("</svg>")
    return "\n".join(out)


def _curve(x0: float, y0: float, x1: float, y1: float) -> str:
    dx = (x1 - x0) / 2
    return "C%.1f,%.1f %.1f,%.1f %.1f,%.1f" % (x0 + dx, y0, x1 - dx, y1, x1, y1)


_BOX = ('<g><title>%s</title><rect x="%.1f" y="%.1f" width="%.1f" height="%s" rx="6" fill="%s" stroke="%s" '
        'stroke-width="1.4"%s/><text x="%.1f" y="%.1f" font-size="12" font-weight="600" fill="#1d2733">%s</text>'
        '<text x="%.1f" y="%.1f" font-size="11" fill="#4a5666">%s</text>')
_BAR = '<rect x="%.1f" y="%.1f" width="%.1f" height="4" fill="%s"/>'


def _box(box: Box, h: int, bar: bool) -> str:
    fill, stroke = COLOURS.get(box.status, UNKNOWN)
    dash = ' stroke-dasharray="5 3"' if box.status in DASHED else ""
    x, y, w = box.x, box.y, box.w
    out = _BOX % (escape(box.tooltip), x, y, w, h, fill, stroke, dash, x + 9, y + 16,
                  escape(_clip(box.title, _MAX_TITLE)), x + 9, y + 30, escape(_clip(box.subtitle, _MAX_SUB)))
    if bar and box.counts:  # a bar split by status: how the stage's nodes ended across parameter sets
        total, left, bar_w = sum(box.counts.values()), x + 9, w - 18
        for status in _ordered(box.counts):
            seg = bar_w * box.counts[status] / total
            out += _BAR % (left, y + h - 10, seg, COLOURS.get(status, UNKNOWN)[1])
            left += seg
    return out + "</g>"


def _legend(pic: Picture) -> str:
    present: dict[str, int] = {}
    for box in pic.boxes:
        for status, count in (box.counts or {box.status: 1}).items():
            present[status] = present.get(status, 0) + count
    what = f"{len(pic.boxes):,} stages, {pic.nodes:,} nodes" if pic.stages else f"{pic.nodes:,} nodes"
    parts = [f'<g font-size="11" fill="#4a5666"><text x="{_MARGIN}" y="{_MARGIN + 10}">{escape(what)}</text>']
    x = _MARGIN + len(what) * _SUB_W + 18
    for status in _ordered(present):
        fill, stroke = COLOURS.get(status, UNKNOWN)
        label = f"{LABELS.get(status, status)} {present[status]}"
        parts.append(f'<rect x="{x:.1f}" y="{_MARGIN + 1}" width="12" height="12" rx="3" fill="{fill}" stroke="{stroke}"/>'
                     f'<text x="{x + 17:.1f}" y="{_MARGIN + 11}">{escape(label)}</text>')
        x += 17 + len(label) * _SUB_W + 16
    parts.append("</g>")
    return "".join(parts)


def dot(pic: Picture) -> str:
    """Graphviz source of the same picture (boxes coloured by status; edges labelled by artifact)."""
    lines = ["digraph orch {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
             '  edge [color="#8796a8", fontname="Helvetica", fontsize=9, fontcolor="#5a6676"];']
    for i, box in enumerate(pic.boxes):
        fill, stroke = COLOURS.get(box.status, UNKNOWN)
        style = ', style="rounded,filled,dashed"' if box.status in DASHED else ""
        lines.append(f'  n{i} [label="{_dq(box.title)}\\n{_dq(box.subtitle)}", fillcolor="{fill}", color="{stroke}",'
                     f' tooltip="{_dq(box.tooltip)}"{style}];')
    for s, d, label in pic.edges:
        lines.append(f'  n{s} -> n{d} [label="{_dq(label)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dq(text: str) -> str:
    """Text inside a DOT double-quoted string: backslashes and quotes escaped, newlines as \\n."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")


def format_of(path: str | None) -> str:
    """The format a file name asks for (.dot or .gv, .png), else svg."""
    suffix = os.path.splitext(path)[1].lower() if path and path != "-" else ""
    return {".dot": "dot", ".gv": "dot", ".png": "png"}.get(suffix, "svg")


def render(nodes: list[dict], fmt: str, stages: bool | None = None) -> bytes:
    """The picture of `nodes` as the bytes of an .svg, .dot or .png file."""
    pic = build(nodes, stages)
    if fmt == "svg":
        return (svg(layout(pic)) + "\n").encode("utf-8")
    return dot(pic).encode("utf-8") if fmt == "dot" else png(dot(pic))


def png(dot_text: str) -> bytes:
    """PNG through Graphviz's `dot` program, the one optional dependency of the picture."""
    import shutil
    import subprocess

    from ..errors import GraphvizNotFoundError, ReportError

    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            "PNG output needs Graphviz's `dot` program, which is not on PATH: install Graphviz "
            "(apt install graphviz, brew install graphviz, conda install graphviz) or use --format svg "
            "(drawn by orch itself) or --format dot")
    proc = subprocess.run([exe, "-Tpng"], input=dot_text.encode(), capture_output=True, timeout=300)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise ReportError(f"{exe} -Tpng failed with exit code {proc.returncode}: {tail}")
    return proc.stdout
