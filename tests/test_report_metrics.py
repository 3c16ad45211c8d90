"""The report's curves of logged metrics (runs/curves.py) and short set names in legends."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from orchestrator.runs import curves
from orchestrator.runs.paramsets import matching_sets, short_names

SVG = "{http://www.w3.org/2000/svg}"


def curve_svgs(html: str) -> list[ET.Element]:
    """Every metric chart of a report, parsed as XML."""
    return [ET.fromstring(m.group(0)) for m in re.finditer(r'<svg [^>]*class="orch-curve".*?</svg>', html, re.S)]


def texts(svg: ET.Element) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG}text")]


def line_paths(svg: ET.Element) -> list[list[tuple[float, float]]]:
    """The points of each drawn line (paths with a stroke colour from the palette)."""
    out = []
    for p in svg.iter(f"{SVG}path"):
        if p.get("stroke") in curves.PALETTE and p.get("stroke-width") == "1.8":
            out.append([tuple(map(float, xy.split(","))) for xy in p.get("d")[1:].split("L")])
    return out


# ---- unit: the charts ----------------------------------------------------------------------------

def test_ticks_are_nice_numbers_and_cover_the_values():
    assert curves.nice_ticks(0, 0.93) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert curves.nice_ticks(3, 97) == [0, 20, 40, 60, 80, 100]
    assert curves.nice_ticks(-0.013, 0.021) == pytest.approx([-0.02, -0.01, 0, 0.01, 0.02, 0.03])
    assert curves.log_ticks(0.0012, 9.5) == pytest.approx([0.001, 0.01, 0.1, 1, 10])
    many = curves.log_ticks(1e-30, 1.0)  # 31 decades: every 4th power of ten, still covering both ends
    assert len(many) <= 9 and many[0] <= 1e-30 and many[-1] >= 1.0
    assert curves.use_log([10.0, 0.05]) and not curves.use_log([10.0, 0.5])  # more than two decades
    assert not curves.use_log([10.0, 0.0]) and not curves.use_log([-10.0, -0.001]) and not curves.use_log([])


def test_a_chart_has_axes_ticks_a_legend_and_tooltips():
    svg = ET.fromstring(curves.chart("train · loss", [
        curves.Line("lr=0.1", [(s, 1 / (s + 1)) for s in range(200)]),  # 1 .. 0.005: a log axis
        curves.Line("lr=0.2", [(s, 0.5 / (s + 1)) for s in range(200)]),
    ], subtitle="2 parameter sets"))
    words = texts(svg)
    assert words[:2] == ["train · loss", "2 parameter sets"]
    assert {"0.001", "0.01", "0.1", "1"} <= set(words)  # decades on the value axis
    assert {"0", "50", "100", "150", "200"} <= set(words)  # steps
    assert "step (value axis logarithmic)" in words and {"lr=0.1", "lr=0.2"} <= set(words)
    tips = [t.text for t in svg.iter(f"{SVG}title")]
    assert any(t.startswith("lr=0.1\nlast 0.005 at step 199; min 0.005 at step 199; max 1 at step 0") for t in tips)
    lines = line_paths(svg)
    assert len(lines) == 2 and all(len(points) == 200 for points in lines)
    # drawn last first (the first on top); lower values lower on the page (greater y); steps to the right
    assert lines[0][0][1] > lines[1][0][1] and lines[0][-1][0] > lines[0][0][0]

    linear = ET.fromstring(curves.chart("acc", [curves.Line("a", [(0, 0.5), (1, 0.6), (2, 0.72)])]))
    assert "step" in texts(linear) and "0.50" in texts(linear) and "0.75" in texts(linear)
    assert len(list(linear.iter(f"{SVG}circle"))) == 3  # short series: a dot (with its value) per point
    assert [c.find(f"{SVG}title").text for c in linear.iter(f"{SVG}circle")][2] == "a: step 2, 0.72"


def test_long_series_are_downsampled_keeping_spikes_and_ends():
    points = [(s, math.sin(s / 300)) for s in range(100_000)]
    points[54_321] = (54_321, 40.0)  # one spike
    kept = curves.downsample(points)
    assert len(kept) <= curves.MAX_POINTS and kept[0] == points[0] and kept[-1] == points[-1]
    assert (54_321, 40.0) in kept and kept == sorted(kept)
    svg = ET.fromstring(curves.chart("x", [curves.Line("a", points)]))
    (drawn,) = line_paths(svg)
    assert len(drawn) <= curves.MAX_POINTS and min(y for _, y in drawn) == pytest.approx(curves._TOP + curves._INSET, abs=0.2)
    assert not list(svg.iter(f"{SVG}circle"))  # no dots on long lines


def test_nan_and_infinite_values_are_skipped_and_said():
    svg = ET.fromstring(curves.chart("loss", [
        curves.Line("ok", [(0, 1.0), (1, 0.5), (2, 0.25)]),
        curves.Line("diverged", [(0, 1.0), (1, float("nan")), (2, float("inf")), (3, 2.0)]),
    ]))
    assert [len(p) for p in line_paths(svg)] == [2, 3]  # drawn last first: diverged, ok
    assert "diverged (2 not finite)" in texts(svg)
    assert any("2 NaN/infinite values not drawn" in (t.text or "") for t in svg.iter(f"{SVG}title"))
    empty = ET.fromstring(curves.chart("loss", [curves.Line("all nan", [(0, float("nan"))])]))
    assert "no finite values to draw" in texts(empty) and "all nan (1 not finite)" in texts(empty)


def test_chart_text_is_escaped():
    evil = '<img src=x onerror="alert(1)">'
    html = curves.chart(evil, [curves.Line(evil, [(0, 1), (1, 2)], note=evil)], subtitle=evil)
    assert "<img" not in html
    svg = ET.fromstring(html)
    assert evil in texts(svg)


# ---- unit: short set names -----------------------------------------------------------------------

def test_short_names_name_each_set_by_what_differs():
    names = ["sweep[train.lr=0.1,model.width=16]", "sweep[train.lr=0.1,model.width=32]",
             "sweep[train.lr=0.2,model.width=16]", "default"]
    short = short_names(names)
    assert short == {names[0]: "lr=0.1,width=16", names[1]: "lr=0.1,width=32", names[2]: "lr=0.2,width=16",
                     "default": "default"}
    assert all(matching_sets(form, names) == [name] for name, form in short.items())  # orch get takes them
    assert short_names(["s[lr=1,seed=0]", "s[lr=2,seed=0]"]) == {"s[lr=1,seed=0]": "lr=1", "s[lr=2,seed=0]": "lr=2"}
    # a leaf name two paths share is spelled in full
    assert short_names(["s[a.lr=1,b.lr=2]", "s[a.lr=1,b.lr=3]"])["s[a.lr=1,b.lr=3]"] == "b.lr=3"
    # a form that would also match another sweep's set keeps the full name
    assert short_names(["a[lr=1]", "b[lr=1]", "b[lr=2]"]) == {"a[lr=1]": "a[lr=1]", "b[lr=1]": "b[lr=1]", "b[lr=2]": "lr=2"}
    assert short_names(["p[seed=0]"]) == {"p[seed=0]": "p[seed=0]"}  # one set: nothing differs
    big = [f"s[lr={i},width={j}]" for i in range(60) for j in range(60)]
    assert short_names(big, big[:2]) == {big[0]: "lr=0,width=0", big[1]: "lr=0,width=1"}  # only those asked for
