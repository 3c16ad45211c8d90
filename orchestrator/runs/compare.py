"""`orch compare`: which configuration of a sweep won, as one table.

One row per parameter set of each run compared; the columns are the parameters whose values differ
between the rows (every parameter with `all_params`), then the final metrics of the set's nodes
(the last value each stage logged, and the top-level numbers of its JSON outputs), then the time its
nodes took to compute (for cached nodes, what they took when they ran). The best value of each metric
column is marked: the lowest, unless the metric's name says higher is better (`HIGHER_IS_BETTER`)
or the user says so. Everything comes from run manifests: comparing never opens the cache's entries.

A metric logged by one stage is named as logged (`loss`); a name several stages report becomes
`stage.name` in every row, so columns never mix two stages' values.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import re

from ..core.graph import AGGREGATE_SET
from ..core.status import Status
from ..errors import OrchError
from .manifest import set_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a report of several sets does not import typing
if TYPE_CHECKING:
    from typing import Any

#: Metric names (their last dotted part, lower case) for which higher values are better; any other
#: metric is a loss or an error and lower wins. `--higher NAME` adds to it for one comparison.
HIGHER_IS_BETTER = re.compile(
    r"(.*_)?(acc|accuracy|f1|f1_score|precision|recall|auc|auroc|r2|score|iou|miou|map|bleu|rouge\w*|psnr|ssim|"
    r"reward|return|throughput|samples_per_s|\w+_per_s|dice)(_\w+)?\Z")

DURATION = "duration_s"  # the last column, and a key --sort accepts


class CompareError(OrchError):
    """A comparison asked for something the runs do not have (a --sort column, a --metric pattern)."""


# Row and Comparison are plain classes, not dataclasses: every run of several parameter sets writes a
# report with a comparison, and importing dataclasses (with inspect, ast, dis, tokenize) and typing costs
# ~25 M instructions there. They keep a dataclass's __init__, __eq__ and __repr__.


class _Record:
    """__eq__ and __repr__ as @dataclass writes them, over the fields named in _FIELDS."""

    _FIELDS: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # a dataclass with eq=True is unhashable

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return tuple(getattr(self, f) for f in self._FIELDS) == tuple(getattr(other, f) for f in self._FIELDS)
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._FIELDS)})"


class Row(_Record):
    _FIELDS = ("run_id", "param_set", "params", "metrics", "duration_s", "status")

    def __init__(self, run_id: str, param_set: str, params: dict[str, Any], metrics: dict[str, float],
                 duration_s: float, status: str):
        self.run_id = run_id
        self.param_set = param_set
        self.params = params  # dotted path -> value (every parameter of the set)
        self.metrics = metrics  # column name -> final value
        self.duration_s = duration_s
        self.status = status  # "ok", or the worst node state of the set (failed, skipped, running)


class Comparison(_Record):
    _FIELDS = ("runs", "params", "metrics", "rows", "higher", "best")

    def __init__(self, runs: list[str], params: list[str], metrics: list[str], rows: list[Row],
                 higher: set[str] | None = None, best: dict[str, int] | None = None):
        self.runs = runs
        self.params = params  # the parameter columns
        self.metrics = metrics  # the metric columns
        self.rows = rows
        self.higher = set() if higher is None else higher  # metric columns where higher is better
        self.best = {} if best is None else best  # metric column -> index of the best row

    def to_json(self) -> dict:
        return {
            "runs": self.runs, "params": self.params, "metrics": self.metrics,
            "best": {m: {"row": i, "higher_is_better": m in self.higher} for m, i in self.best.items()},
            "rows": [{"run_id": r.run_id, "param_set": r.param_set, "params": {p: r.params.get(p) for p in self.params},
                      "metrics": {m: r.metrics.get(m) for m in self.metrics}, DURATION: r.duration_s,
                      "status": r.status} for r in self.rows],
        }


def build_comparison(manifests: list[dict], *, all_params: bool = False, sort: str | None = None,
                     metric_patterns: tuple[str, ...] = (), higher: tuple[str, ...] = ()) -> Comparison:
    """The comparison of the parameter sets of `manifests` (see the module docstring).

    sort: a metric, parameter or `duration_s` column, ascending; `-NAME` descending. Rows without a
    value sort last either way. metric_patterns: keep only the metric columns matching one of these
    globs. higher: metric columns (or globs) where higher is better, beyond HIGHER_IS_BETTER."""
    collected = [_set_nodes(m) for m in manifests]
    param_names = {part for m in manifests for name in m.get("param_sets", {})
                   for path in _flatten(m["param_sets"][name]) for part in (path, path.rsplit(".", 1)[-1])}
    naming = _metric_naming(collected, param_names)
    rows = []
    for m, by_set in zip(manifests, collected):
        for set_name, nodes in by_set.items():
            rows.append(Row(m.get("run_id", "?"), set_name, _flatten(m.get("param_sets", {}).get(set_name, {})),
                            _final_metrics(nodes, naming), _duration(nodes), _status(nodes)))
    metrics = list(dict.fromkeys(name for r in rows for name in r.metrics))  # the stages' order
    if metric_patterns:
        metrics = [name for name in metrics if any(fnmatch.fnmatchcase(name, p) for p in metric_patterns)]
        if not metrics:
            raise CompareError(f"no metric matches {', '.join(metric_patterns)}; the runs have: "
                               f"{', '.join(sorted({n for r in rows for n in r.metrics})) or 'no metrics'}")
    params = _param_columns(rows, all_params)
    up = {name for name in metrics if _higher_is_better(name, higher)}
    comparison = Comparison([m.get("run_id", "?") for m in manifests], params, metrics, rows, up)
    if sort:
        _sort(comparison, sort)
    comparison.best = _best(comparison)
    return comparison


def _set_nodes(manifest: dict) -> dict[str, list[dict]]:
    """The manifest's node rows by parameter set, in the run's set order (aggregates span sets: no row)."""
    by_set: dict[str, list[dict]] = {name: [] for name in set_names(manifest) if name != AGGREGATE_SET}
    for n in manifest.get("nodes", []):
        if isinstance(n, dict):
            members = by_set.get(n.get("param_set"))
            if members is not None:
                members.append(n)
    return by_set


def _metric_naming(collected: list[dict[str, list[dict]]], param_names: set[str]) -> dict[tuple[str, str], str]:
    """(stage, metric) -> column name: the metric's own name, or `stage.metric` when several stages
    report it or a parameter has that name (a logged `lr` is not the parameter `lr`)."""
    stages_of: dict[str, set[str]] = {}
    for by_set in collected:
        for nodes in by_set.values():
            for n in nodes:
                metrics = n.get("metrics")
                if metrics:
                    for name in metrics:
                        stages_of.setdefault(name, set()).add(n["stage"])
    return {(stage, name): (name if len(stages) == 1 and name not in param_names else f"{stage}.{name}")
            for name, stages in stages_of.items() for stage in stages}


def _final_metrics(nodes: list[dict], naming: dict[tuple[str, str], str]) -> dict[str, float]:
    found = {}
    for n in nodes:
        metrics = n.get("metrics")
        if not metrics:
            continue
        for name, summary in metrics.items():
            if isinstance(summary, dict) and isinstance(summary.get("last"), (int, float)):
                found[naming[(n["stage"], name)]] = summary["last"]
    return found


def _duration(nodes: list[dict]) -> float:
    """Compute time of the set: what its nodes took in this run, or when they ran (cached ones)."""
    total = 0.0
    cached = str(Status.CACHED)
    for n in nodes:
        took = n.get("computed_s") if n.get("status") == cached else n.get("duration_s")
        if took and isinstance(took, (int, float)):
            total += took
    return round(total, 6)


def _status(nodes: list[dict]) -> str:
    states = {n.get("status") for n in nodes}
    for bad in (Status.FAILED, Status.SKIPPED, Status.PENDING, Status.RUN):
        if bad in states:
            return str(bad)
    return "ok"


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_ABSENT = object()


def _param_columns(rows: list[Row], all_params: bool) -> list[str]:
    """Parameter paths in first-seen order; unless all_params, only those whose values differ."""
    paths = list(dict.fromkeys(p for r in rows for p in r.params))
    if all_params:
        return paths
    return [p for p in paths if len({json.dumps(r.params.get(p, _ABSENT), sort_keys=True, default=repr)
                                    for r in rows}) > 1]


def _higher_is_better(column: str, higher: tuple[str, ...]) -> bool:
    if any(fnmatch.fnmatchcase(column, p) or fnmatch.fnmatchcase(column.rsplit(".", 1)[-1], p) for p in higher):
        return True
    return HIGHER_IS_BETTER.match(column.rsplit(".", 1)[-1].lower()) is not None


def _sort(c: Comparison, spec: str) -> None:
    descending, name = spec.startswith("-"), spec.lstrip("-")
    if name in c.metrics:
        value = lambda r: r.metrics.get(name)  # noqa: E731
    elif name == DURATION or name == "duration":
        value = lambda r: r.duration_s  # noqa: E731
    elif any(name in r.params for r in c.rows):
        value = lambda r: r.params.get(name)  # noqa: E731
    else:
        raise CompareError(f"--sort {spec}: no such column; metrics: {', '.join(c.metrics) or 'none'}; "
                           f"parameters: {', '.join(c.params) or 'none'}; or {DURATION}")

    def key(r: Row):
        v = value(r)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, -v if descending else v, "")
        return (0, 0, str(v))  # text values: in order (descending reverses below)

    c.rows.sort(key=key)
    if descending and not all(isinstance(value(r), (int, float, type(None))) for r in c.rows):
        present = [r for r in c.rows if value(r) is not None]
        c.rows[:] = present[::-1] + [r for r in c.rows if value(r) is None]


def _best(c: Comparison) -> dict[str, int]:
    best = {}
    for m in c.metrics:
        candidates = [(r.metrics[m], i) for i, r in enumerate(c.rows)
                      if isinstance(r.metrics.get(m), (int, float)) and not math.isnan(r.metrics[m])]
        if len({v for v, _ in candidates}) < 2:
            continue  # one value, or all equal: no contest
        pick = max if m in c.higher else min
        best[m] = pick(candidates, key=lambda vi: vi[0])[1]
    return best


# -- rendering -------------------------------------------------------------------------------------

def _cells(c: Comparison, mark: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells; the best value of each metric column wrapped in `mark`."""
    several_runs = len(c.runs) > 1
    header = (["run"] if several_runs else []) + ["param_set"] + c.params + c.metrics + [DURATION]
    show_status = any(r.status != "ok" for r in c.rows)
    if show_status:
        header.append("status")
    body = []
    for i, r in enumerate(c.rows):
        cells = ([r.run_id] if several_runs else []) + [r.param_set]
        cells += [format_value(r.params.get(p)) for p in c.params]
        for m in c.metrics:
            text = format_value(r.metrics.get(m))
            cells.append(f"{mark[0]}{text}{mark[1]}" if c.best.get(m) == i else text)
        cells.append(f"{r.duration_s:.2f}")
        if show_status:
            cells.append(r.status)
        body.append(cells)
    return header, body


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def render(c: Comparison, fmt: str) -> str:
    """The comparison as `table` (aligned text, best marked *), `md` (best in bold), `csv` or `json`."""
    if fmt == "json":
        return json.dumps(c.to_json(), indent=1, allow_nan=True) + "\n"
    if fmt == "csv":
        header, body = _cells(c, ("", ""))
        import csv

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue()
    if fmt == "md":
        header, body = _cells(c, ("**", "**"))
        lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in body]
        return "\n".join(lines) + "\n" + _legend(c) + "\n"
    header, body = _cells(c, ("", " *"))
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    numeric = [all(_numeric(x) for x in col) for col in zip(*body)] if body else [False] * len(header)
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in body:
        lines.append("  ".join(x.rjust(w) if num else x.ljust(w) for x, w, num in zip(row, widths, numeric)).rstrip())
    return "\n".join(lines) + "\n" + _legend(c) + "\n"


def _numeric(cell: str) -> bool:
    text = cell.removesuffix(" *")
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def _legend(c: Comparison) -> str:
    if not c.best:
        return "" if c.metrics else "(no metrics: stages log them with record.log(...) or return them as JSON)"
    up = [m for m in c.best if m in c.higher]
    down = [m for m in c.best if m not in c.higher]
    said = [f"lowest {', '.join(down)}"] if down else []
    said += [f"highest {', '.join(up)}"] if up else []
    return "best marked: " + "; ".join(said)


def _md(text: str) -> str:
    return text.replace("|", "\\|")
