"""The HTML report of a run: one self-contained file (inline CSS and SVG, no script, no network) written
next to the manifest at the end of every run, and again by `orch report` / `orch show --html`.

It is built from the manifest alone, so any past run can be re-rendered, plus the files its rows
point to: the metrics streams (`series`) drawn as curves (runs/curves.py) and the stored images
(`output_paths`, runs/images.py). Everything in it that came from the user (stage, set and metric
names, reasons, parameter values, tracebacks) is HTML-escaped. It must stay cheap on 10,000-node runs:
the picture turns into one box per stage, the node table shows the first ROWS_PER_STATUS nodes of
each status (the manifest keeps them all; above COMPACT_NODES nodes, none of the cached ones, which the
stage table counts by stage), metrics get one chart per stage and metric with at most
MAX_LINES parameter sets in it, at most MAX_NODE_CHARTS charts of single nodes, and the streams and
images read are bounded in number and bytes. A file that cannot be read is named in the report.
"""

from __future__ import annotations

import json
import os
import time

from ..core.graph import AGGREGATE_SET
from ..core.status import Status
from ..params import split_set_key
from . import drawing
from .drawing import escape

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path

    from . import curves

ROWS_PER_STATUS = 200  # node-table rows per status, over the whole report
COMPACT_NODES = 1_000  # above this many nodes the node table lists no cached node (the stage table counts them)
TRACEBACKS = 30  # failures shown with their traceback; the others by their error line
MAX_STAGES = 500  # rows of the per-stage table
MAX_SETS = 300  # rows of the parameter-set table
MAX_VARYING = 16  # columns of the parameter-set table
VALUE_CHARS = 80  # a parameter value is cut here (the full value is in its tooltip)
MAX_METRICS = 24  # metric columns of the comparison
IMAGES_OPEN = 6  # images of one stage and file shown open; the others in a closed <details>
FOLD_ROWS = 30  # a comparison of more sets is folded (closed <details>) under a line naming the best
MAX_CHARTS = 40  # overlaid charts, one per stage and metric
MAX_LINES = 10  # parameter sets in one overlaid chart (beyond: the extremes and evenly spaced between)
MAX_NODE_CHARTS = 48  # charts of single nodes, over the whole report
SERIES_BYTES = 32_000_000  # a metrics stream larger than this is not drawn
SERIES_TOTAL = 64_000_000  # metrics streams read for one report


def write_report(manifest: dict, path: str | os.PathLike) -> None:
    """Render `manifest` and write it to `path` atomically (a reader never sees half a report)."""
    write_file(path, render(manifest).encode("utf-8", "replace"))  # a non-UTF-8 path in argv: shown as ?


def report_for_run(cache_root: Path, run: str = "latest", output: Path | None = None) -> Path:
    """(Re)write the report of a past run, by default as runs/<id>/report.html; returns where."""
    from pathlib import Path

    from .manifest import read_manifest, resolve_run

    path = Path(output) if output is not None else resolve_run(cache_root, run) / "report.html"
    write_report(read_manifest(cache_root, run), path)
    return path


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Atomic write; a path that cannot be written is the user's ReportError, not a traceback."""
    from ..errors import ReportError
    from ..fsutil import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from e


def render(m: dict) -> str:
    nodes = m.get("nodes") or []
    run_id = str(m.get("run_id", "?"))
    sets = m.get("param_sets") or {}
    compared = ""
    if nodes:
        compared = _compare(m)
        sections = [_dag(nodes), _failures(nodes, sets), compared, _metrics(nodes, sets), _images(nodes, sets),
                    _stages(nodes), _node_tables(nodes, sets)]
    else:
        sections = ['<p class="note">No nodes recorded: this run has not finished (it is still running, or it was '
                    'killed before the end). Re-run the experiment: everything that finished is in the cache.</p>']
    sections = [part for part in sections + [_param_sets(sets, differing=not compared)] if part]
    return "\n".join([_HEAD.format(title=escape(f"orch run {run_id}"), css=_CSS),
                      _header(m, nodes, sections), *sections, _FOOT.format(run=escape(run_id))])


# ---- sections ----------------------------------------------------------------------------------

def _header(m: dict, nodes: list[dict], sections: list[str]) -> str:
    counts = m.get("summary") or _count(nodes)
    status = str(m.get("status", "?"))
    node_time = sum(n.get("duration_s") or 0 for n in nodes)
    argv = " ".join(str(a) for a in m.get("argv") or [])
    rows = [
        ("experiment", f"<code>{escape(str(m.get('experiment', '')))}</code>"),
        ("command", f"<code>orch {escape(argv)}</code>" if argv else "—"),
        ("started", escape(_when(m.get("started")))),
        ("finished", escape(_when(m.get("finished"))) if m.get("finished") else "—"),
        ("wall time", escape(_secs(m.get("duration_s")))),
        ("time in stages", f"{escape(_secs(node_time))} <span class=dim>(sum over nodes)</span>"),
        ("parameter sets", str(len(m.get("param_sets") or {}))),
        ("nodes", f"{len(nodes):,} &nbsp; {_chips(counts)}"),
    ]
    grid = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in
                     (("dag", "DAG"), ("failures", "failures"), ("compare", "comparison"), ("metrics", "metrics"),
                      ("images", "images"),
                      ("stages", "stages"), ("nodes", "nodes"),
                      ("params", "parameter sets")) if any(p.startswith(f'<section id="{a}">') for p in sections))
    return (f'<header><h1><span class="badge st-{_cls(status)}">{escape(status)}</span> run '
            f'<code>{escape(str(m.get("run_id", "?")))}</code></h1><dl class="meta">{grid}</dl>'
            f'<nav>{nav}</nav></header>')


def _dag(nodes: list[dict]) -> str:
    pic = drawing.build(nodes)
    if pic.stages:
        note = (f"{len(nodes):,} nodes: one box per stage, its nodes counted by status across parameter sets "
                f"(every node is drawn up to {drawing.NODE_LIMIT}).")
    else:
        note = ("Every node; a computation shared by several parameter sets (same stage, key and parameters read) "
                "is one box. Hover over a box for the reason it ran.")
    if len(pic.boxes) > drawing.DRAW_LIMIT:
        body = f'<p class="note">{len(pic.boxes):,} stages are too many to draw; see the stage table below.</p>'
    else:
        body = f'<div class="dag">{drawing.svg(drawing.layout(pic), fit=True)}</div>'
    return f'<section id="dag"><h2>DAG</h2><p class="dim">{escape(note)}</p>{body}</section>'


def _failures(nodes: list[dict], sets: dict) -> str:
    failed, skipped = [], {}  # skipped: the failure named -> how many nodes it skipped
    failed_status, skipped_status = str(Status.FAILED), str(Status.SKIPPED)
    for n in nodes:
        status = n.get("status")
        if status == failed_status:
            failed.append(n)
        elif status == skipped_status:
            cause = n.get("skipped_because") or "?"
            skipped[cause] = skipped.get(cause, 0) + 1
    if not failed:
        return ""
    out = [f'<section id="failures"><h2>Failures <span class="count">{len(failed)}</span></h2>']
    for n in failed[:TRACEBACKS]:
        out.append(f'<div class="failure"><h3>{escape(n["stage"])} <span class="set">[{escape(n["param_set"])}]'
                   f'</span> <span class="dim">after {escape(_secs(n.get("duration_s")))}</span></h3>'
                   f'<p class="error">{escape(n.get("error") or "failed")}</p>')
        if n.get("reason"):
            reason = drawing.aggregate_reason(n["reason"], sets) if n["param_set"] == AGGREGATE_SET else n["reason"]
            out.append(f'<p class="dim">ran because: {escape(reason)}</p>')
        if n.get("traceback"):
            out.append(f"<pre>{escape(n['traceback'].rstrip())}</pre>")
        out.append("</div>")
    if len(failed) > TRACEBACKS:
        rest = "".join(f"<li>{escape(n['stage'])} [{escape(n['param_set'])}]: {escape(n.get('error') or '')}</li>"
                       for n in failed[TRACEBACKS:TRACEBACKS + ROWS_PER_STATUS])
        more = len(failed) - TRACEBACKS - ROWS_PER_STATUS
        out.append(f"<p>Further failures (tracebacks in the manifest and the run's logs):</p><ul>{rest}</ul>"
                   + (f'<p class="note">… and {more:,} more.</p>' if more > 0 else ""))
    if skipped:
        items = "".join(f"<li>{count} skipped because {escape(cause)} failed</li>"
                        for cause, count in list(skipped.items())[:ROWS_PER_STATUS])
        out.append(f"<ul class=dim>{items}</ul>")
    out.append("</section>")
    return "".join(out)


def _compare(m: dict) -> str:
    """`orch compare` of this run: a row per parameter set, the parameters that differ, the final
    metrics (the best of each marked) and the compute time; nothing for one set without metrics."""
    from .manifest import set_names

    if (not any(isinstance(n, dict) and n.get("metrics") for n in m.get("nodes") or [])
            and sum(name != AGGREGATE_SET for name in set_names(m)) < 2):
        return ""  # what the comparison below gives (< 2 rows, no metric), without importing runs.compare
    from .compare import build_comparison, format_value

    c = build_comparison([m])
    if len(c.rows) < 2 and not c.metrics:
        return ""
    params, metrics = c.params[:MAX_VARYING], c.metrics[:MAX_METRICS]
    status = any(r.status != "ok" for r in c.rows)
    head = "".join(f"<th>{escape(p)}</th>" for p in params)
    for name in metrics:
        way = "higher" if name in c.higher else "lower"
        head += f'<th class=num title="{way} is better">{escape(name)} {"↑" if way == "higher" else "↓"}</th>'
    head += "<th class=num>compute time</th>" + ("<th>status</th>" if status else "")
    if len(c.rows) > 1:
        out = [f'<section id="compare"><h2>Parameter sets compared <span class="count">{len(c.rows):,}</span></h2>'
               '<p class="dim">The parameters that differ between the sets, their final metrics (the last value '
               "logged, or a number a JSON output holds) and the time their nodes took to compute; the best value of "
               "each metric is marked (the lowest, or the highest where the name says so: acc, f1, score, ...). "
               "<code>orch compare</code> prints the same table.</p>"]
    else:
        out = ['<section id="compare"><h2>Final metrics</h2><p class="dim">The last value of each metric the stages '
               "logged, the numbers their JSON outputs hold, and the time the nodes took to compute "
               "(<code>orch compare</code>).</p>"]
    best = [f"<b>{escape(name)}</b> {escape(format_value(c.rows[i].metrics[name]))} in "
            f'<span class="set">{escape(c.rows[i].param_set)}</span>' for name, i in c.best.items() if name in metrics]
    folded = len(c.rows) > FOLD_ROWS
    if best and folded:
        out.append(f"<p>Best: {' · '.join(best)}</p>")
    if folded:
        out.append(f"<details><summary>Every parameter set <span class=\"count\">{len(c.rows):,}</span></summary>")
    out.append(f'<div class="scroll"><table class="compare"><thead><tr><th>set</th>{head}</tr></thead><tbody>')
    for i, r in enumerate(c.rows[:MAX_SETS]):
        cells = "".join(f"<td>{_value(r.params[p]) if p in r.params else '<span class=dim>—</span>'}</td>" for p in params)
        for name in metrics:
            v = r.metrics.get(name)
            text = escape(format_value(v)) if v is not None else "<span class=dim>—</span>"
            if c.best.get(name) == i:
                way = "highest" if name in c.higher else "lowest"
                cells += f'<td class="num best" title="best: the {way} {escape(name)}">{text}</td>'
            else:
                cells += f'<td class="num" title="{escape(repr(v))}">{text}</td>' if v is not None else f"<td class=num>{text}</td>"
        cells += f"<td class=num>{_secs(r.duration_s)}</td>"
        if status:
            cells += f'<td><span class="chip st-{_cls(r.status)}">{escape(r.status)}</span></td>'
        out.append(f'<tr><td class="set">{escape(r.param_set)}</td>{cells}</tr>')
    out.append("</tbody></table></div>" + ("</details>" if folded else ""))
    notes = []
    if len(c.params) > MAX_VARYING:
        notes.append(f"{len(c.params) - MAX_VARYING} more differing parameters are not shown")
    if len(c.metrics) > MAX_METRICS:
        notes.append(f"{len(c.metrics) - MAX_METRICS} more metrics are not shown: "
                     + ", ".join(c.metrics[MAX_METRICS:MAX_METRICS + 40]))
    if len(c.rows) > MAX_SETS:
        notes.append(f"the first {MAX_SETS} of {len(c.rows):,} sets are listed")
    if notes:
        out.append(f'<p class="note">{escape("; ".join(notes))} (<code>orch compare</code> shows everything).</p>')
    out.append("</section>")
    return "".join(out)


def _metrics(nodes: list[dict], sets: dict) -> str:
    """Curves of what the stages logged: one chart per stage and metric with a line per parameter
    set (for a big sweep, the same MAX_LINES sets in every chart of a stage), then each of those
    nodes on its own, in closed <details>."""
    streams = _Streams()
    by_stage: dict[str, list[dict]] = {}  # stage id -> its nodes that logged, in manifest order
    metrics_of: dict[str, dict[str, int]] = {}  # stage id -> metric -> how many of its nodes logged it
    for n in nodes:
        logged = streams.logged(n) if isinstance(n.get("series"), str) else None  # (logged's own first test)
        if logged:
            stage = n.get("stage_id") or n["stage"]
            by_stage.setdefault(stage, []).append(n)
            counts = metrics_of.setdefault(stage, {})
            for name in logged:
                counts[name] = counts.get(name, 0) + 1
    if not by_stage:
        return ""
    from . import curves  # only for a run whose stages logged metrics
    from .paramsets import short_names

    charts = [(stage, name) for stage, counts in metrics_of.items() for name in counts]
    shown = charts[:MAX_CHARTS]
    picked = {stage: _pick(members, next(iter(metrics_of[stage]))) for stage, members in by_stage.items()
              if any(stage == s for s, _ in shown)}
    in_charts = list(dict.fromkeys(n["param_set"] for drawn in picked.values() for n in drawn))
    names = short_names(list(sets) + [n["param_set"] for n in nodes], in_charts)
    slots = {s: k for k, s in enumerate(in_charts)} if len(in_charts) <= len(curves.PALETTE) else None
    out = ['<section id="metrics"><h2>Metrics</h2><p class="dim">What the stages logged (<code>record.log</code>, '
           '<code>orchestrator.metrics.log</code>): one chart per stage and metric, one line per parameter set. '
           'Hover over a line or a legend entry for its last, lowest and highest values.</p><div class="charts">']
    for stage, metric in shown:
        members, drawn = by_stage[stage], picked[stage]
        lines = [line for n in drawn if (line := _line(n, metric, streams, names, slots)) is not None]
        if not lines:
            continue
        count = metrics_of[stage][metric]
        sub = _plural(count, "parameter set") if count > 1 else names.get(members[0]["param_set"], "")
        caption = ""
        if len(members) > len(drawn):
            caption = (f'<figcaption class="note">{len(drawn)} of {len(members):,} parameter sets, the same in every '
                       f"chart of {escape(members[0]['stage'])}: the lowest and highest last "
                       f"{escape(next(iter(metrics_of[stage])))} and evenly spaced between, in that order.</figcaption>")
        out.append(f"<figure>{curves.chart(members[0]['stage'] + ' · ' + metric, lines, subtitle=sub)}{caption}</figure>")
    out.append("</div>")
    if len(charts) > MAX_CHARTS:
        more = [f"{by_stage[stage][0]['stage']} · {metric}" for stage, metric in charts[MAX_CHARTS:]]
        out.append(f'<p class="note">{len(more):,} more stage and metric pairs are not drawn: '
                   f'{escape(", ".join(more[:30]))}{" …" if len(more) > 30 else ""}.</p>')
    if any(len(members) > 1 for members in by_stage.values()):
        every = all(len(picked.get(stage, ())) == len(members) for stage, members in by_stage.items())
        drawn_ids = {id(n) for drawn in picked.values() for n in drawn}
        out.append(_node_charts([n for n in nodes if id(n) in drawn_ids], streams, names, every))
    if streams.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in streams.problems[:50])
        more = len(streams.problems) - 50
        out.append(f'<p class="note">Not drawn:</p><ul class="dim">{items}</ul>'
                   + (f'<p class="note">… and {more:,} more.</p>' if more > 0 else ""))
    out.append("</section>")
    return "".join(out)


def _line(n: dict, metric: str, streams: _Streams, names: dict[str, str], slots: dict | None) -> curves.Line | None:
    from . import curves

    prepared = streams.points(n, metric)
    if prepared is None:
        return None
    failed = n.get("status") == Status.FAILED
    return curves.Line(names.get(n["param_set"], n["param_set"]) + (" (failed)" if failed else ""), prepared[0],
                       note=f"{n['stage']} [{n['param_set']}]", dashed=failed, dropped=prepared[1],
                       slot=None if slots is None else slots[n["param_set"]])


def _node_charts(nodes: list[dict], streams: _Streams, names: dict[str, str], every: bool) -> str:
    """Charts of single nodes (every metric it logged), closed until opened, MAX_NODE_CHARTS in all."""
    from . import curves

    body, charts, left_out = [], 0, 0
    for n in nodes:
        logged = streams.logged(n)
        if charts + len(logged) > MAX_NODE_CHARTS:
            left_out += 1
            continue
        subtitle = names.get(n["param_set"], n["param_set"])
        figures = []
        for m in logged:
            prepared = streams.points(n, m)
            if prepared is not None:
                line = curves.Line(m, prepared[0], dropped=prepared[1])
                figures.append(f"<figure>{curves.chart(n['stage'] + ' · ' + m, [line], subtitle=subtitle)}</figure>")
        if not figures:
            continue
        charts += len(figures)
        last = ", ".join(f"{m} {curves.number(s['last'])}" for m, s in list((n.get("metrics") or {}).items())[:4]
                         if isinstance(s, dict) and isinstance(s.get("last"), (int, float)))
        body.append(f'<details><summary>{escape(n["stage"])} <span class="set">[{escape(n["param_set"])}]</span> '
                    f'<span class="chip st-{_cls(n.get("status", ""))}">{escape(n.get("status", ""))}</span> '
                    f'<span class="dim">{escape(last)}</span></summary><div class="charts">{"".join(figures)}</div></details>')
    note = f'<p class="note">{left_out:,} more nodes with metrics are not drawn here.</p>' if left_out else ""
    title = "Every node on its own" if every else "The nodes drawn above, each on its own"
    return (f'<details class="nodes-charts"><summary>{title} <span class="count">{len(nodes):,}</span></summary>'
            f'{"".join(body)}{note}</details>')


def _pick(members: list[dict], metric: str) -> list[dict]:
    """The nodes of a stage drawn in its charts: all of them up to MAX_LINES, else the lowest and
    highest last value of `metric` and evenly spaced between (nodes without a known last value after them)."""
    if len(members) <= MAX_LINES:
        return members

    def last(n: dict) -> float:
        s = (n.get("metrics") or {}).get(metric)
        v = s.get("last") if isinstance(s, dict) else None
        return v if isinstance(v, (int, float)) and v == v else float("inf")

    ranked = sorted(members, key=last)
    idx = sorted({round(k * (len(ranked) - 1) / (MAX_LINES - 1)) for k in range(MAX_LINES)})
    return [ranked[i] for i in idx]


class _Streams:
    """The metrics streams of nodes, each read at most once and within SERIES_BYTES per stream and
    SERIES_TOTAL in all (what is not read says why in `problems`), and their points as charts draw them."""

    def __init__(self):
        self.cache: dict[str, dict | None] = {}
        self.prepared: dict[tuple[str, str], tuple[list, int] | None] = {}
        self.budget = SERIES_TOTAL
        self.problems: list[str] = []

    def logged(self, n: dict) -> list[str]:
        """The metrics a node logged as a series (not the final numbers of its JSON outputs), from its
        summary; for a node without one (it failed), from its stream."""
        if not isinstance(n.get("series"), str):
            return []
        summary = n.get("metrics")
        if isinstance(summary, dict) and summary:
            return [name for name, s in summary.items()
                    if isinstance(s, dict) and (s.get("step") is not None or (s.get("n") or 0) > 1)]
        return list(self.read(n) or {})

    def points(self, n: dict, metric: str) -> tuple[list, int] | None:
        """curves.prepare of one metric of a node's stream (None if the stream or the metric is absent)."""
        key = (n["series"], metric)
        if key not in self.prepared:
            from . import curves

            points = (self.read(n) or {}).get(metric)
            self.prepared[key] = curves.prepare(points) if points else None
        return self.prepared[key]

    def read(self, n: dict) -> dict | None:
        from ..metrics import read_series

        path = n["series"]
        if path not in self.cache:
            self.cache[path] = None
            what = f"{n['stage']} [{n['param_set']}]"
            try:
                size = os.path.getsize(path)
            except OSError as e:
                self.problems.append(f"{what}: its metrics stream {path} cannot be read ({e.strerror or e})")
                return None
            if size > SERIES_BYTES:
                self.problems.append(f"{what}: its metrics stream is {size / 1e6:.0f} MB, more than a report reads "
                                     f"({SERIES_BYTES / 1e6:.0f} MB); orchestrator.metrics.read_series({path!r}) reads it")
            elif size > self.budget:
                self.problems.append(f"{what}: the report has read {SERIES_TOTAL / 1e6:.0f} MB of metrics streams already")
            else:
                self.budget -= size
                self.cache[path] = read_series(path)
        return self.cache[path]


def _images(nodes: list[dict], sets: dict) -> str:
    """The images stages stored (plots, predictions), grouped by stage and file, embedded."""
    if not any(n.get("output_paths") for n in nodes):
        return ""  # what collect finds then (no image, no problem), without importing runs.images
    from . import images
    from .paramsets import short_names

    found = images.collect(nodes)
    if not found.images and not found.problems:
        return ""
    names = short_names(list(sets) + [n["param_set"] for n in nodes],
                        list(dict.fromkeys(img.node["param_set"] for img in found.images)))
    groups: dict[tuple[str, str], list] = {}
    for img in found.images:
        groups.setdefault((img.node["stage"], img.label), []).append(img)
    out = [f'<section id="images"><h2>Images <span class="count">{len(found.images) + found.more}'
           f'{"+" if found.unsearched else ""}</span></h2>']
    skipped = []
    for (stage, label), imgs in groups.items():
        figures = []
        for img in imgs:
            set_name = img.node["param_set"]
            if not img.data_uri:
                skipped.append(f"{stage} [{set_name}] {label}: {img.problem} ({img.path})")
                continue
            figures.append(f'<figure class="image"><img src="{img.data_uri}" alt="{escape(label)}" loading="lazy" '
                           f'title="{escape(img.path)}"><figcaption><span class="set" title="{escape(set_name)}">'
                           f'{escape(names.get(set_name, set_name))}</span></figcaption></figure>')
        if figures:
            out.append(f'<h3>{escape(stage)} · <code>{escape(label)}</code></h3><div class="images">'
                       f'{"".join(figures[:IMAGES_OPEN])}</div>')
        if len(figures) > IMAGES_OPEN:
            out.append(f'<details><summary>{len(figures) - IMAGES_OPEN} more</summary><div class="images">'
                       f'{"".join(figures[IMAGES_OPEN:])}</div></details>')
    notes = skipped + found.problems
    if notes:
        out.append('<p class="note">Not shown:</p><ul class="dim">'
                   + "".join(f"<li>{escape(t)}</li>" for t in notes[:100]) + "</ul>")
    if found.more or found.unsearched:
        rest = [f"{found.more:,} more images"] if found.more else []
        rest += [f"{found.unsearched:,} more directory outputs (which may hold images)"] if found.unsearched else []
        out.append(f'<p class="note">Not shown: {" and ".join(rest)}; the report shows the first '
                   f"{images.MAX_IMAGES} images of the run.</p>")
    out.append("</section>")
    return "".join(out)


def _stages(nodes: list[dict]) -> str:
    rows: dict[str, list] = {}  # stage id -> [name, counts, total s, max s]
    for n in nodes:
        stage = n.get("stage_id") or n["stage"]
        row = rows.get(stage)
        if row is None:
            row = rows[stage] = [n["stage"], {}, 0.0, 0.0]
        status, secs = n.get("status", ""), n.get("duration_s")
        counts = row[1]
        counts[status] = counts.get(status, 0) + 1
        if secs:
            row[2] += secs
            if secs > row[3]:
                row[3] = secs
    out = ['<section id="stages"><h2>Stages</h2><table><thead><tr><th>stage</th><th class=num>nodes</th><th>status</th>'
           '<th class=num>total time</th><th class=num>slowest</th></tr></thead><tbody>']
    for stage_id, (name, counts, total, slowest) in list(rows.items())[:MAX_STAGES]:
        out.append(f'<tr><td title="{escape(stage_id)}">{escape(name)}</td><td class=num>{sum(counts.values())}</td>'
                   f"<td>{_chips(counts)}</td><td class=num>{_secs(total)}</td><td class=num>{_secs(slowest)}</td></tr>")
    out.append("</tbody></table>")
    if len(rows) > MAX_STAGES:
        out.append(f'<p class="note">The first {MAX_STAGES} of {len(rows):,} stages.</p>')
    out.append("</section>")
    return "".join(out)


def _node_tables(nodes: list[dict], sets: dict) -> str:
    by_set: dict[str, tuple[list[dict], dict[str, int]]] = {}  # set -> (its nodes, their counts by status)
    for n in nodes:
        group = by_set.get(n["param_set"])
        if group is None:
            group = by_set[n["param_set"]] = ([], {})
        group[0].append(n)
        status = n.get("status", "")
        group[1][status] = group[1].get(status, 0) + 1
    cached = str(Status.CACHED)
    compact = len(nodes) > COMPACT_NODES  # a big sweep: its cached rows say nothing the stage table does not
    shown: dict[str, int] = {cached: ROWS_PER_STATUS} if compact else {}  # rows listed per status
    hidden: dict[str, int] = {}
    out = ['<section id="nodes"><h2>Nodes by parameter set</h2>']
    body = []
    for set_name, (members, counts) in by_set.items():
        rows = []
        if all(shown.get(status, 0) >= ROWS_PER_STATUS for status in counts):  # none of them is listed
            for status, count in counts.items():
                hidden[status] = hidden.get(status, 0) + count
            members_left = ()
        else:
            members_left = members
        for n in members_left:
            status = n.get("status", "")
            if shown.get(status, 0) >= ROWS_PER_STATUS:
                hidden[status] = hidden.get(status, 0) + 1
                continue
            shown[status] = shown.get(status, 0) + 1
            rows.append(_node_row(n, sets))
        left_out = len(members) - len(rows)
        is_open = " open" if len(nodes) <= 100 or counts.get(Status.FAILED) else ""
        body.append(f'<details{is_open}><summary><span class="set">{escape(set_name)}</span> &nbsp; '
                    f"{_plural(len(members), 'node')} &nbsp; {_chips(counts)}</summary>")
        if rows:
            body.append(_NODES_HEAD)
            body.extend(rows)
            body.append("</tbody></table>")
        if left_out:
            body.append(f'<p class="note">{left_out} of these nodes are not listed (see the note above).</p>')
        body.append("</details>")
    folded = hidden.pop(cached, 0) if compact else 0
    if folded:
        out.append(f'<p class="note">A run of more than {COMPACT_NODES:,} nodes lists no cached node here: its '
                   f'{folded:,} cached nodes are counted by stage in the <a href="#stages">stage table</a>. '
                   f"The manifest has every node.</p>")
    if hidden:
        what = ", ".join(f"{count:,} {status}" for status, count in hidden.items())
        out.append(f'<p class="note">Listing the first {ROWS_PER_STATUS} nodes of each status; not listed: {escape(what)}. '
                   f"The manifest has every node.</p>")
    return "".join(out + body + ["</section>"])


def _node_row(n: dict, sets: dict) -> str:
    status = n.get("status", "")
    aggregate = n.get("param_set") == AGGREGATE_SET
    reason = drawing.aggregate_reason(n.get("reason") or "", sets) if aggregate else n.get("reason") or ""
    if status == Status.SKIPPED:
        reason = f"upstream {n.get('skipped_because', '?')} failed"
    elif status == Status.FAILED:
        reason = f"{reason}; {n.get('error', '')}" if reason else n.get("error", "")
    outs = "<br>".join(f'{escape(name)}=<code title="{escape(h)}">{escape(h[:10])}</code>'
                       for name, h in (n.get("outputs") or {}).items())
    reads = _aggregate_reads(n["reads"]) if aggregate and n.get("reads") else \
        [_value_cell(path, v) for path, v in (n.get("reads") or {}).items()]
    reads += [f"file <code>{escape(path)}</code>" for path in (n.get("files") or {})]
    key = n.get("key") or ""
    return (f'<tr><td title="{escape("key " + key if key else "no key")}">{escape(n["stage"])}</td>'
            f'<td><span class="chip st-{_cls(status)}">{escape(status)}</span></td>'
            f"<td class=num>{_secs(n.get('duration_s'))}</td><td>{escape(reason)}</td><td>{outs}</td>"
            f"<td>{'<br>'.join(reads)}</td></tr>")


def _aggregate_reads(reads: dict) -> list[str]:
    """An aggregate reads `<set_key(set)>.<path>`: one line per parameter set, its paths decoded."""
    by_set: dict[str, list[str]] = {}
    for path, v in reads.items():
        name, rest = split_set_key(path)
        by_set.setdefault(name, []).append(_value_cell(rest, v) if rest else f"(the whole set)&nbsp;=&nbsp;{_value(v)}")
    return [f'parameter set <span class="set">{escape(name)}</span>: {", ".join(cells)}' for name, cells in by_set.items()]


def _param_sets(sets: dict, differing: bool = True) -> str:
    """The parameters of every set: what differs (unless the comparison above shows it), and what not."""
    if not sets:
        return ""
    flat = {name: _flatten(values) for name, values in sets.items()}
    keys: dict[str, None] = {}
    for f in flat.values():
        keys.update(dict.fromkeys(f))
    missing = object()
    first = next(iter(flat.values()))
    varying = [k for k in keys if any(f.get(k, missing) != first.get(k, missing) for f in flat.values())]
    common = [k for k in keys if k not in set(varying)]
    out = [f'<section id="params"><h2>Parameter sets <span class="count">{len(sets)}</span></h2>']
    if varying and not differing:
        out.append('<p class="dim">What differs between the sets is in the <a href="#compare">comparison</a> above.</p>')
    elif varying:
        cols = varying[:MAX_VARYING]
        head = "".join(f"<th>{escape(k)}</th>" for k in cols)
        out.append(f'<h3>What differs</h3><table class="params"><thead><tr><th>set</th>{head}</tr></thead><tbody>')
        for name, f in list(flat.items())[:MAX_SETS]:
            cells = "".join(f"<td>{_value(f[k]) if k in f else '<span class=dim>—</span>'}</td>" for k in cols)
            out.append(f'<tr><td class="set">{escape(name)}</td>{cells}</tr>')
        out.append("</tbody></table>")
        notes = []
        if len(varying) > MAX_VARYING:
            notes.append(f"{len(varying) - MAX_VARYING} more differing parameters: "
                         + ", ".join(varying[MAX_VARYING:MAX_VARYING + 50]))
        if len(flat) > MAX_SETS:
            notes.append(f"the first {MAX_SETS} of {len(flat):,} sets")
        if notes:
            out.append(f'<p class="note">{escape("; ".join(notes))}.</p>')
    if common:
        title = "Common to every set" if len(sets) > 1 else f"Parameters of {next(iter(sets))}"
        rows = "".join(f"<tr><td><code>{escape(k)}</code></td><td>{_value(first[k])}</td></tr>" for k in common)
        out.append(f'<h3>{escape(title)}</h3><table class="params"><tbody>{rows}</tbody></table>')
    out.append("</section>")
    return "".join(out)


# ---- helpers ------------------------------------------------------------------------------------

def _flatten(values) -> dict:
    """Dotted paths to leaves (lists are leaves), iteratively."""
    flat: dict = {}
    stack = [("", values)]
    while stack:
        prefix, v = stack.pop()
        if isinstance(v, dict) and v:
            stack.extend((f"{prefix}.{k}" if prefix else str(k), sub) for k, sub in reversed(list(v.items())))
        else:
            flat[prefix or "(value)"] = v
    return flat


def _value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    if len(text) <= VALUE_CHARS:
        return f"<code>{escape(text)}</code>"
    return f'<code title="{escape(text)}">{escape(text[:VALUE_CHARS - 1])}…</code>'


def _value_cell(path: str, v) -> str:
    return f"<code>{escape(path)}</code>&nbsp;=&nbsp;{_value(v)}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _count(nodes: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.get("status", "")] = counts.get(n.get("status", ""), 0) + 1
    return counts


def _chips(counts: dict[str, int]) -> str:
    if len(counts) == 1:  # one status (most rows): what the general case gives, without its generator
        ((s, count),) = counts.items()
        return f'<span class="chip st-{_cls(s)}">{count:,} {escape(s)}</span>' if count or s not in drawing.COLOURS else ""
    return " ".join(f'<span class="chip st-{_cls(s)}">{counts[s]:,} {escape(s)}</span>'
                    for s in drawing._ordered(counts))


def _cls(status: str) -> str:
    return status if status in drawing.COLOURS or status in ("ok", "running") else "other"


def _secs(s) -> str:
    if not isinstance(s, (int, float)):
        return "—"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    minutes, secs = divmod(int(round(s)), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m {secs:02d}s" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def _when(stamp) -> str:
    """A manifest's time in local time."""
    if not stamp:
        return "—"
    seconds = _utc_seconds(str(stamp))
    if seconds is not None:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return str(stamp)


def _utc_seconds(text: str) -> int | None:
    """Seconds since the epoch of a time as the manifest writes it ("2026-01-31T12:00:00.123+00:00"),
    without datetime (a cached run does not import it, 5 M instructions); None for any other text."""
    digits = text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19] + text[20:23]
    if not (len(text) == 29 and text[4:20:3] == "--T::." and text.endswith("+00:00")
            and digits.isascii() and digits.isdigit()):
        return None
    fields = y, mo, d, h, mi, s = tuple(int(text[i:i + n]) for i, n in ((0, 4), (5, 2), (8, 2), (11, 2), (14, 2), (17, 2)))
    y -= mo <= 2  # days from the civil date (H. Hinnant's algorithm), then checked against gmtime
    era, yoe = divmod(y, 400)
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    seconds = (era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468) * 86400 + h * 3600 + mi * 60 + s
    return seconds if tuple(time.gmtime(seconds)[:6]) == fields else None  # Feb 30, 24:00, a leap second


def _status_css() -> str:
    rules = [f".st-{s}{{background:{fill};border-color:{stroke}}}" for s, (fill, stroke) in drawing.COLOURS.items()]
    ok, bad = drawing.COLOURS[Status.RAN], drawing.COLOURS[Status.FAILED]
    rules += [f".st-ok{{background:{ok[0]};border-color:{ok[1]}}}", ".st-running{background:#fff0d2;border-color:#dd8f0b}",
              f".badge.st-failed{{background:{bad[1]};color:#fff}}", f".badge.st-ok{{background:{ok[1]};color:#fff}}"]
    return "".join(rules)


_CSS = """
:root{--fg:#1d2733;--dim:#5f6b7a;--line:#dde3ea;--bg:#f7f9fb}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
code,pre,.set{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
h1{font-size:22px;margin:0 0 12px;font-weight:600}
h2{font-size:17px;margin:0 0 10px;font-weight:600}
h3{font-size:14px;margin:14px 0 6px;font-weight:600}
header,section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 18px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0 0 12px}
dl.meta dt{color:var(--dim)}dl.meta dd{margin:0;overflow-wrap:anywhere}
nav a{color:#2f6db5;text-decoration:none}nav{font-size:13px}
.dim{color:var(--dim)}.note{color:var(--dim);font-style:italic}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-size:13px;vertical-align:middle;border:1px solid;margin-right:6px}
.chip{display:inline-block;padding:0 7px;border-radius:9px;border:1px solid #bbb;font-size:12px;white-space:nowrap;margin:1px 0}
.count{display:inline-block;min-width:22px;padding:0 7px;border-radius:10px;background:#eef1f5;font-size:12px;text-align:center;color:var(--dim)}
.dag{overflow:auto;max-height:75vh;border:1px solid var(--line);border-radius:8px;background:#fcfdfe}
.dag svg{display:block}
table{border-collapse:collapse;width:100%;margin:6px 0 4px;font-size:13px}
th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--dim);font-weight:500;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
table.nodes{table-layout:fixed}
table.params{width:auto;min-width:40%}
td{overflow-wrap:anywhere}
details{border-top:1px solid var(--line);padding:8px 0}
summary{cursor:pointer}
.failure{border-left:4px solid #d0342c;padding:2px 0 2px 14px;margin:12px 0}
.error{color:#a3221b;font-weight:600;margin:4px 0;white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:10px 12px;overflow:auto;max-height:360px;margin:6px 0}
footer{color:var(--dim);font-size:12px}
.scroll{overflow-x:auto}
table.compare{width:auto;min-width:50%}
table.compare td,table.compare th{padding:4px 14px 4px 10px}
table.compare td.best{background:#dcf3e3;font-weight:600;border-radius:4px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:14px;margin:10px 0}
.charts figure,figure.image{margin:0;border:1px solid var(--line);border-radius:8px;padding:6px;background:#fff;min-width:0}
.charts svg{display:block}
figcaption{font-size:12px;margin:4px 6px 2px}
.images{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px;margin:6px 0 14px}
figure.image img{display:block;max-width:100%;height:auto;margin:0 auto}
figure.image figcaption{text-align:center}
details.nodes-charts>details{margin-left:14px}
""" + _status_css()

_NODES_HEAD = ('<table class="nodes"><colgroup><col style="width:17%"><col style="width:8%"><col style="width:8%">'
               '<col style="width:31%"><col style="width:18%"><col style="width:18%"></colgroup><thead><tr><th>stage</th>'
               '<th>status</th><th class=num>time</th><th>why it ran</th><th>outputs</th><th>reads</th></tr></thead><tbody>')

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head><body>"""

_FOOT = """<footer>Written by orch from <code>runs/{run}/manifest.json</code>, which records every node, its key and its
trace; re-write this page with <code>orch report {run}</code>.</footer></body></html>
"""
