"""Line charts of logged metrics as inline SVG, drawn in pure Python like the DAG (runs/drawing.py).

One chart is one metric: a line per node (per parameter set when a sweep's nodes are overlaid),
axes with ticks at nice numbers (1, 2 or 5 times a power of ten), a logarithmic value axis when every
value is positive and they span more than two decades (a loss falling from 10 to 0.001), and a
legend. NaN and infinite values are not drawn (the legend says how many were left out), and a line
of more than MAX_POINTS points keeps the lowest and highest value of each of MAX_POINTS / 2 buckets,
so spikes survive and a chart stays a few kilobytes. Hovering a line, a legend entry or a point
(short series) shows its values through SVG <title> tooltips: no script.

Everything from the user (metric, stage and set names) is escaped; the output is valid XML and valid
inline HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import isfinite
from operator import itemgetter

from .drawing import escape

MAX_POINTS = 500  # per line, after downsampling
MARKERS = 40  # lines of at most this many points get a dot (with a tooltip) per point
LOG_SPAN = 100.0  # max / min beyond which the value axis is logarithmic (more than two decades)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#7f7f7f")
DASHES = ("", "6 3", "2 3")  # after the palette's colours, its colours again, dashed

WIDTH, PLOT_H = 480, 210  # the SVG's drawing units; it scales to its container's width
_TOP, _RIGHT, _BOTTOM = 34, 18, 38  # around the plot area (above it: the title; below: ticks and "step")
_CHAR_W = 6.4  # px per character of the 11 px labels
_LEGEND_ROW = 17
_INSET = 5  # px between the axes and the first and last ticks
_MAX_LABEL = 44  # characters of a legend label (the full label is in its tooltip)


@dataclass
class Line:
    label: str  # legend text: a parameter set's short name, or a metric's name
    points: list[tuple[float, float]]  # (step, value) in logged order: numbers (NaN and infinities allowed)
    note: str = ""  # more for the tooltip (e.g. "failed")
    dashed: bool = False  # drawn dashed whatever its position (e.g. a failed node's curve)
    dropped: int = 0  # non-finite values already taken out of `points` (by prepare)
    slot: int | None = None  # its colour's place in the palette (one set, one colour in every chart); default: its place


@dataclass
class _Scale:
    lo: float
    hi: float
    log: bool
    ticks: list[float]
    labels: list[str]

    def at(self, v: float, a: float, b: float) -> float:
        """v on an axis from a (at lo) to b (at hi)."""
        return self.mapping(a, b)([v])[0]

    def mapping(self, a: float, b: float):
        """values -> their positions on an axis from a (at lo) to b (at hi), for many values at once."""
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        if hi <= lo:
            return lambda vs: [(a + b) / 2 for _ in vs]
        k = (b - a) / (hi - lo)
        if self.log:
            log10 = math.log10
            return lambda vs: [a + (log10(v) - lo) * k for v in vs]
        return lambda vs: [a + (v - lo) * k for v in vs]


def chart(title: str, lines: list[Line], subtitle: str = "", x_label: str = "step") -> str:
    """One SVG chart of `lines` (drawn in order, the first on top in the legend)."""
    clean, dropped = [], []
    for line in lines:
        points, left_out = prepare(line.points)
        clean.append(points)
        dropped.append(left_out + line.dropped)
    xs = [x for pts in clean for x, _ in pts]
    ys = [y for pts in clean for _, y in pts]
    texts = [_clip(line.label, _MAX_LABEL) + (f" ({n} not finite)" if n else "") for line, n in zip(lines, dropped)]
    legend_h = _legend_height(texts)
    height = _TOP + PLOT_H + _BOTTOM + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="orch-curve" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" style="width:100%;height:auto;max-width:{WIDTH * 1.6:.0f}px" '
           f'font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>',
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="10" y="18" font-size="13" font-weight="600" fill="#1d2733">{escape(_clip(title, 60))}</text>']
    if subtitle:
        out.append(f'<text x="{WIDTH - _RIGHT}" y="18" text-anchor="end" fill="#5f6b7a">{escape(_clip(subtitle, 34))}</text>')
    if not xs:
        out.append(f'<text x="{WIDTH / 2:.0f}" y="{_TOP + PLOT_H / 2:.0f}" text-anchor="middle" fill="#5f6b7a">'
                   f'no finite values to draw</text>')
        out.append(_legend(lines, texts, clean, dropped, _TOP + PLOT_H + _BOTTOM))
        out.append("</svg>")
        return "".join(out)
    integers = all(float(x).is_integer() for x in xs)
    xscale = _linear(min(xs), max(xs), integers=integers, target=6)
    yscale = _value_scale(min(ys), max(ys), log=use_log(ys))
    left = 14 + max(len(s) for s in yscale.labels) * _CHAR_W
    x0, x1, y0, y1 = left, WIDTH - _RIGHT, _TOP + PLOT_H, _TOP  # plot corners: y grows downwards
    # values are placed INSET inside the axes, so that points on the first or last tick stay clear of them
    px0, px1, py0, py1 = x0 + _INSET, x1 - _INSET, y0 - _INSET, y1 + _INSET

    grid, labels = [], []
    for v, text in zip(yscale.ticks, yscale.labels):
        y = yscale.at(v, py0, py1)
        grid.append(f"M{x0:.1f},{y:.1f}H{x1:.1f}")
        labels.append(f'<text x="{x0 - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end">{escape(text)}</text>')
    for v, text in zip(xscale.ticks, xscale.labels):
        x = xscale.at(v, px0, px1)
        grid.append(f"M{x:.1f},{y1:.1f}V{y0:.1f}")
        labels.append(f'<text x="{x:.1f}" y="{y0 + 15:.1f}" text-anchor="middle">{escape(text)}</text>')
    out.append(f'<path d="{"".join(grid)}" stroke="#e6eaef" stroke-width="1" fill="none"/>')
    out.append(f'<path d="M{x0:.1f},{y1:.1f}V{y0:.1f}H{x1:.1f}" stroke="#9aa5b1" stroke-width="1" fill="none"/>')
    out.append(f'<g fill="#5f6b7a">{"".join(labels)}'
               f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 31:.1f}" text-anchor="middle">{escape(x_label)}'
               f'{" (value axis logarithmic)" if yscale.log else ""}</text></g>')

    to_x, to_y = xscale.mapping(px0, px1), yscale.mapping(py0, py1)
    for i in reversed(range(len(lines))):  # the first line is drawn last, on top
        pts, line = clean[i], lines[i]
        if not pts:
            continue
        colour, dash = _style(i, line)
        coords = list(zip(to_x([x for x, _ in pts]), to_y([y for _, y in pts])))
        tip = escape(_line_tip(line, pts, dropped[i]))
        parts = [f'<g><title>{tip}</title>']
        if len(coords) > 1:
            d = "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.8" stroke-linejoin="round"'
                         f'{dash}/>')
        if len(coords) <= MARKERS:
            label, radius = escape(line.label), 4 if len(coords) == 1 else 3 if len(coords) <= 12 else 2.2
            for (x, y), (sx, sy) in zip(coords, pts):
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}">'
                             f'<title>{label}: step {escape(number(sx))}, {escape(number(sy))}</title></circle>')
        parts.append("</g>")
        out.append("".join(parts))
    out.append(_legend(lines, texts, clean, dropped, _TOP + PLOT_H + _BOTTOM))
    out.append("</svg>")
    return "".join(out)


def prepare(points: list[tuple[float, float]]) -> tuple[list[tuple[float, float]], int]:
    """(the points a chart draws: finite, by step, downsampled; how many were not finite). A caller
    drawing one series in several charts prepares it once and passes `dropped` on in its Line."""
    finite = [(x, y) for x, y in points if isfinite(x) and isfinite(y)]
    finite.sort(key=itemgetter(0))  # stable: repeated steps (a resumed run) keep their order
    return downsample(finite), len(points) - len(finite)


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` points: the first, the last, and the lowest and highest of each bucket between
    (in their order), so that a spike is never smoothed away."""
    n = len(points)
    if n <= limit:
        return points
    buckets = max(1, (limit - 2) // 2)
    size = (n - 2) / buckets
    ys = [y for _, y in points]
    out = [points[0]]
    for b in range(buckets):
        start, end = 1 + int(b * size), 1 + int((b + 1) * size)
        if start >= end:
            continue
        lo = min(range(start, end), key=ys.__getitem__)
        hi = max(range(start, end), key=ys.__getitem__)
        out.extend(points[k] for k in sorted({lo, hi}))
    out.append(points[-1])
    return out


def use_log(values: list[float]) -> bool:
    """A logarithmic value axis: every value positive and spanning more than two decades (and within
    1e-200..1e200, where every power of ten its ticks take is a float)."""
    return bool(values) and 1e-200 < min(values) and max(values) < 1e200 and max(values) / min(values) > LOG_SPAN


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Ticks at a nice step (1, 2 or 5 times a power of ten) covering [lo, hi]: the first at or below
    lo, the last at or above hi."""
    return _linear(lo, hi, integers=False, target=target).ticks


def log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Powers of ten covering [lo, hi] (0 < lo < hi), every k-th one if there are more than `most`."""
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    every = max(1, math.ceil((last - first + 1) / most))
    first -= first % every
    return [10.0 ** k for k in range(first, last + every, every)]


def _linear(lo: float, hi: float, integers: bool, target: int) -> _Scale:
    if hi == lo:  # one value: a range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    if math.isfinite(span) and span > max(abs(lo), abs(hi)) * 1e-12:
        step = _nice(span / max(1, target - 1), round_=True)
        if integers:
            step = max(step, 1.0)
        start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
        if math.isfinite(end - start) and (end - start) / step < 4 * target:
            ticks = [start + k * step for k in range(int(round((end - start) / step)) + 1)]
            return _Scale(ticks[0], ticks[-1], False, ticks, [_tick(t, step) for t in ticks])
    # beyond what floats resolve (near ±1e308, 1e16 + 1): the axis is just the two ends
    return _Scale(lo, hi, False, [lo, hi], [number(lo), number(hi)])


def _value_scale(lo: float, hi: float, log: bool) -> _Scale:
    if not log:
        return _linear(lo, hi, integers=False, target=5)
    ticks = log_ticks(lo, hi)
    return _Scale(ticks[0], ticks[-1], True, ticks, [_power(t) for t in ticks])


def _nice(x: float, round_: bool) -> float:
    """1, 2, 5 or 10 times the power of ten of x (Heckbert's nice numbers)."""
    exp = math.floor(math.log10(x))
    f = x / 10 ** exp
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10.0 ** exp


def _tick(v: float, step: float) -> str:
    """A tick label with as many decimals as the step needs; exponent notation for very large or
    very small numbers."""
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 1e6 or abs(step) < 1e-4:
        return _exp(f"{v:.3g}")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:.{decimals}f}"


def _power(v: float) -> str:
    k = round(math.log10(v))
    return f"{v:g}" if -3 <= k <= 4 else f"1e{k}"


def _exp(text: str) -> str:
    """1e-05 -> 1e-5, 2.5e+06 -> 2.5e6."""
    mant, e, power = text.partition("e")
    return f"{mant}e{int(power)}" if e else text


def number(v: float) -> str:
    """A value as tooltips and captions show it: up to 6 significant digits."""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return _exp(f"{v:.6g}")


def _style(i: int, line: Line) -> tuple[str, str]:
    i = i if line.slot is None else line.slot
    colour = PALETTE[i % len(PALETTE)]
    dash = "4 3" if line.dashed else DASHES[(i // len(PALETTE)) % len(DASHES)]
    return colour, f' stroke-dasharray="{dash}"' if dash else ""


def _line_tip(line: Line, pts: list[tuple[float, float]], dropped: int) -> str:
    parts = [line.label]
    if line.note:
        parts.append(line.note)
    if pts:
        lo = min(pts, key=lambda p: p[1])
        hi = max(pts, key=lambda p: p[1])
        parts.append(f"last {number(pts[-1][1])} at step {number(pts[-1][0])}; min {number(lo[1])} at step {number(lo[0])}; "
                     f"max {number(hi[1])} at step {number(hi[0])}")
    if dropped:
        parts.append(f"{dropped} NaN/infinite value{'s' if dropped != 1 else ''} not drawn")
    return "\n".join(parts)


def _legend_entries(texts: list[str]) -> list[tuple[int, int, float]]:
    """(row, line index, x) of each entry, flowing left to right and wrapping at the chart's width."""
    placed, row, x = [], 0, 10.0
    for i, text in enumerate(texts):
        w = 26 + len(text) * _CHAR_W + 14
        if x > 10 and x + w > WIDTH - 8:
            row, x = row + 1, 10.0
        placed.append((row, i, x))
        x += w
    return placed


def _legend_height(texts: list[str]) -> int:
    return (_legend_entries(texts)[-1][0] + 1) * _LEGEND_ROW + 6 if texts else 0


def _legend(lines: list[Line], texts: list[str], clean: list[list[tuple[float, float]]], dropped: list[int],
            top: float) -> str:
    parts = ['<g fill="#1d2733">']
    for row, i, x in _legend_entries(texts):
        line = lines[i]
        colour, dash = _style(i, line)
        y = top + row * _LEGEND_ROW + 10
        parts.append(f'<g><title>{escape(_line_tip(line, clean[i], dropped[i]))}</title>'
                     f'<path d="M{x:.1f},{y:.1f}h20" stroke="{colour}" stroke-width="2.5"{dash}/>'
                     f'<text x="{x + 26:.1f}" y="{y + 4:.1f}">{escape(texts[i])}</text></g>')
    parts.append("</g>")
    return "".join(parts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
