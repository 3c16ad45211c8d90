"""The report's curves of logged metrics (runs/curves.py), the images stages stored (runs/images.py),
short set names in legends, and the report of a real sweep in a real browser."""

from __future__ import annotations

import base64
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cdp import Chromium
from test_report import WINDOW, Page, _png_pixels, _png_rgb, chromium, run_dir

from orchestrator.runs import curves, images, report
from orchestrator.runs.paramsets import matching_sets, short_names
from orchestrator.runs.report import render

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


@pytest.mark.parametrize("points", [
    [(0, -1e308), (1, 1e308)], [(0, 1e308), (1, 1.7e308)], [(0, 1e16), (1, 1e16 + 2)], [(0, 1.0), (1, 1 + 1e-15)],
    [(0, 5e-324), (1, 1e-300)], [(0, 1e-199), (1, 1e199)], [(0, 0), (2 ** 62, 1)], [(-5, 1), (-5, 2)], [(3, -0.0)]])
def test_extreme_values_still_draw(points):
    """Whatever a stage logs, the chart is drawn (a report that fails would fail the run's end)."""
    svg = ET.fromstring(curves.chart("x", [curves.Line("a", points)]))
    assert len(line_paths(svg)) == (len(points) > 1) and len(list(svg.iter(f"{SVG}circle"))) == len(points)


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


# ---- unit: images --------------------------------------------------------------------------------

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPj/HwADAgH/eL9GtQAAAABJRU5ErkJggg==")


def test_images_are_found_embedded_and_bounded(tmp_path, monkeypatch):
    out = tmp_path / "dir-output"
    (out / "sub").mkdir(parents=True)
    (out / "a.png").write_bytes(PNG)
    (out / "sub" / "b.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (out / "notes.txt").write_text("no image")
    (out / "fake.png").write_text("not a png")
    (out / "big.png").write_bytes(PNG + b"\0" * 5000)
    single = tmp_path / "plot.png"
    single.write_bytes(PNG)
    nodes = [{"stage": "plot", "param_set": "a", "output_paths": {"figure": str(single)}},
             {"stage": "eval", "param_set": "a", "output_paths": {"plots": str(out), "gone": str(tmp_path / "nope")}},
             {"stage": "plot", "param_set": "b", "output_paths": {"figure": str(single)}}]  # the same object again
    monkeypatch.setattr(images, "MAX_BYTES", 3000)
    found = images.collect(nodes)
    assert [(i.node["stage"], i.label) for i in found.images] == [
        ("plot", "figure"), ("eval", "plots/a.png"), ("eval", "plots/big.png"), ("eval", "plots/fake.png"),
        ("eval", "plots/sub/b.svg")]
    embedded = {i.label: i.data_uri for i in found.images if i.data_uri}
    assert embedded["figure"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert base64.b64decode(embedded["plots/sub/b.svg"].split(",", 1)[1]).startswith(b"<svg")
    problems = {i.label: i.problem for i in found.images if not i.data_uri}
    assert problems == {"plots/big.png": "5 kB, larger than the 3 kB an image may take in the report",
                        "plots/fake.png": "not a PNG image"}
    assert found.problems == []  # a missing output path is simply not a directory nor an image

    monkeypatch.setattr(images, "MAX_BYTES", 10_000)
    monkeypatch.setattr(images, "TOTAL_BYTES", len(PNG) * 2 + 100)
    monkeypatch.setattr(images, "MAX_IMAGES", 4)
    found = images.collect(nodes)
    assert [bool(i.data_uri) for i in found.images] == [True, True, False, False]
    assert found.more == 1 and found.unsearched == 1  # b.svg; the directory `gone` is not looked into
    assert "the report's" in found.images[2].problem and "used up" in found.images[2].problem


def test_images_of_a_sweep_are_grouped_by_stage_and_file(tmp_path, monkeypatch):
    nodes = []
    for k in range(4):
        (tmp_path / f"{k}.png").write_bytes(PNG + bytes([k]))  # (trailing bytes after IEND: still a PNG)
        nodes.append({"id": k, "stage": "plot<b>", "param_set": f"s[lr={k}]", "status": "ran", "inputs": [],
                      "output_paths": {"fig": str(tmp_path / f"{k}.png")}})
    monkeypatch.setattr(report, "IMAGES_OPEN", 3)
    html = render({"run_id": "r", "param_sets": {n["param_set"]: {"lr": k} for k, n in enumerate(nodes)}, "nodes": nodes})
    page = Page(html)
    assert page.tags["img"] == 4 and "plot<b> · fig" in page.text and "<b>" not in html
    section = html[html.index('<section id="images">'):]
    assert section.index("lr=2") < section.index("<details><summary>1 more</summary>") < section.index("lr=3")


# ---- unit: the metrics section -------------------------------------------------------------------

def stream(path: Path, rows: list[tuple[int | None, dict]]) -> str:
    path.write_text("".join(json.dumps({"t": 0, "step": s, "metrics": m}) + "\n" for s, m in rows))
    return str(path)


def sweep_manifest(tmp_path: Path, sets: int, steps: int = 20) -> dict:
    """`sets` parameter sets, each a train node that logged loss (falling faster with larger k) and a
    lr that never changes, and an evaluate node with a JSON output's final number."""
    nodes, names = [], [f"sweep[train.k={k}]" for k in range(sets)]
    for k, name in enumerate(names):
        loss = [(s, 1.0 / (1 + s * (k + 1))) for s in range(steps)]
        path = stream(tmp_path / f"{k}.jsonl", [(s, {"loss": v, "lr": 0.1}) for s, v in loss])
        summary = {"loss": {"last": loss[-1][1], "step": steps - 1, "min": loss[-1][1], "min_step": steps - 1,
                            "max": 1.0, "max_step": 0, "n": steps},
                   "lr": {"last": 0.1, "step": steps - 1, "min": 0.1, "min_step": 0, "max": 0.1, "max_step": 0, "n": steps}}
        nodes.append({"id": 2 * k, "stage": "train", "stage_id": "s:train", "param_set": name, "status": "ran",
                      "key": "k", "inputs": [], "outputs": {}, "reads": {}, "metrics": summary, "series": path})
        nodes.append({"id": 2 * k + 1, "stage": "evaluate", "stage_id": "s:evaluate", "param_set": name, "status": "ran",
                      "key": "e", "inputs": [["model", 2 * k, "model"]], "outputs": {}, "reads": {},
                      "metrics": {"rel_l2": {"last": 0.1, "step": None, "min": 0.1, "min_step": None, "max": 0.1,
                                             "max_step": None, "n": 1}}})
    return {"run_id": "r", "status": "ok", "param_sets": {n: {"train": {"k": k}} for k, n in enumerate(names)},
            "nodes": nodes}


def test_a_sweep_gets_one_chart_per_stage_and_metric_one_line_per_set(tmp_path):
    html = render(sweep_manifest(tmp_path, sets=3))
    Page(html)
    charts = curve_svgs(html)
    overlay = charts[:2]
    assert [texts(c)[0] for c in overlay] == ["train · loss", "train · lr"]  # not rel_l2: a final number only
    assert {"k=0", "k=1", "k=2"} <= set(texts(overlay[0])) and len(line_paths(overlay[0])) == 3
    # one colour per set in every chart
    colours = [[p.get("stroke") for p in c.iter(f"{SVG}path") if p.get("stroke-width") == "2.5"] for c in overlay]
    assert colours[0] == colours[1] == list(curves.PALETTE[:3])
    assert len(charts) == 2 + 3 * 2  # and every node on its own, in closed <details>
    assert "Every node on its own" in html and '<details class="nodes-charts">' in html
    assert 'href="#metrics"' in html


def test_one_set_gets_its_final_metrics_and_its_curves_once(tmp_path):
    html = render(sweep_manifest(tmp_path, sets=1))
    text = Page(html).text
    assert "Final metrics" in text and "Parameter sets compared" not in text
    table = html[html.index('<table class="compare">'):html.index("</table>")]
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table) == ["set", "loss ↓", "lr ↓", "rel_l2 ↓", "compute time"]
    assert "best" not in table  # nothing to compare with
    assert len(curve_svgs(html)) == 2 and "on its own" not in text  # the charts are the node's already


def test_a_failed_node_is_drawn_from_its_stream_dashed(tmp_path):
    m = sweep_manifest(tmp_path, sets=3)
    failed = m["nodes"][2]  # train of k=1: no summary, its stream up to the failure
    failed.update(status="failed", error="RuntimeError: diverged")
    del failed["metrics"]
    loss = curve_svgs(render(m))[0]
    assert "k=1 (failed)" in texts(loss)
    dashed = [p for p in loss.iter(f"{SVG}path") if p.get("stroke-width") == "1.8" and p.get("stroke-dasharray")]
    assert len(dashed) == 1 and dashed[0].get("stroke") == curves.PALETTE[1]


def test_a_large_sweep_draws_the_extremes_and_caps_the_charts(tmp_path, monkeypatch):
    m = sweep_manifest(tmp_path, sets=30)
    html = render(m)
    loss, lr = curve_svgs(html)[:2]
    legend = [t for t in texts(loss) if t.startswith("k=")]
    # the lowest last loss is k=29's, the highest k=0's; the legend is ordered by last value
    assert len(legend) == report.MAX_LINES and legend[0] == "k=29" and legend[-1] == "k=0"
    assert [t for t in texts(lr) if t.startswith("k=")] == legend  # the same sets in every chart of the stage
    text = Page(html).text
    assert ("10 of 30 parameter sets, the same in every chart of train: the lowest and highest last loss "
            "and evenly spaced between") in text
    assert len(curve_svgs(html)) == 2 + 2 * report.MAX_LINES  # then the nodes drawn, each on its own
    assert "The nodes drawn above, each on its own" in text

    monkeypatch.setattr(report, "MAX_NODE_CHARTS", 7)
    monkeypatch.setattr(report, "FOLD_ROWS", 20)
    html = render(m)
    text = Page(html).text
    assert len(curve_svgs(html)) == 2 + 6 and "7 more nodes with metrics are not drawn here." in text
    # a long comparison is folded under the line that names the best (lr and rel_l2: all equal, no best)
    assert f"Best: loss {1 / (1 + 19 * 30):.4g} in sweep[train.k=29]" in text.replace("\xa0", " ")
    assert '<details><summary>Every parameter set <span class="count">30</span>' in html


def test_a_stream_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    m = sweep_manifest(tmp_path, sets=2)
    Path(m["nodes"][0]["series"]).unlink()
    big = m["nodes"][2]["series"]
    monkeypatch.setattr(report, "SERIES_BYTES", Path(big).stat().st_size - 1)
    text = Page(render(m)).text
    assert f"train [sweep[train.k=0]]: its metrics stream {tmp_path / '0.jsonl'} cannot be read" in text
    assert "train [sweep[train.k=1]]: its metrics stream is 0 MB, more than a report reads" in text


# ---- a real run ----------------------------------------------------------------------------------

def metrics_project(p):
    """A sweep over train.lr (3 sets): `train` logs loss (NaN at the end when lr > 0.25) and a metric
    whose name holds markup; `evaluate` stores a directory with a PNG, an SVG with a script in it and a
    text file; the aggregate `summary` stores a PNG file. PNGs are written by the stage itself."""
    p.write("stages/m.py", '''
        import struct
        import zlib

        from orchestrator import aggregate, stage, FileReferenceCacher, JsonCacher, PickleCacher

        def write_png(path, width, height, rgb):
            def chunk(kind, data):
                return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
            raw = b"".join(b"\\0" + bytes(rgb) * width for _ in range(height))
            with open(path, "wb") as f:
                f.write(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

        @stage(outputs=["model"], cachers=[PickleCacher])
        def train(record):
            lr, loss = record.params.train.lr, 10.0
            for epoch in range(record.params.train.epochs):
                loss *= 1 - lr
                record.log(step=epoch, loss=loss, **{"acc<i>": 1 - loss / 10})
            if lr > 0.25:
                record.log(step=record.params.train.epochs, loss=float("nan"))
            return loss

        @stage(inputs=["model"], outputs=["plots", "evaluation"], cachers=[FileReferenceCacher(expect="dir"), JsonCacher])
        def evaluate(record, model):
            out = record.get_dir("plots")
            shade = int(600 * record.params.train.lr)
            write_png(f"{out}/pred.png", 160, 100, (shade, 90, 200))
            with open(f"{out}/notes.txt", "w") as f:
                f.write("not an image")
            with open(f"{out}/drawing.svg", "w") as f:
                f.write('<svg xmlns="http://www.w3.org/2000/svg" width="80" height="50"><script>alert(1)</script>'
                        f'<rect width="80" height="50" fill="rgb({shade},90,200)"/></svg>')
            return out, {"rel_l2": model / 10, "n_test": 8}

        @aggregate(inputs=["evaluation"], outputs=["summary"], cachers=[FileReferenceCacher(expect="file")])
        def summary(record, evaluation):
            path = record.get_path("summary.png")
            write_png(path, 120, 60, (20, 160, 60))
            return path
    ''')
    p.write("experiment.py", '''
        from stages.m import evaluate, summary, train

        def run(record):
            evaluate(train(record))

        def aggregate(records):
            summary(records)
    ''')
    p.write("params/sweep.yaml", '''
        train:
          epochs: 40
          lr: 0.1
        sweep:
          train.lr: [0.1, 0.2, 0.3]
    ''')
    return p


def test_a_real_sweep_reports_its_curves_and_images(project):
    metrics_project(project)
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")
    m = project.manifest()
    html = (run_dir(project) / "report.html").read_text()
    check_metrics_report(m, html)
    assert all(n["series"].startswith(str(run_dir(project))) for n in m["nodes"] if n["stage"] == "train")

    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")  # everything cached: the same from the store
    m = project.manifest()
    assert {n["status"] for n in m["nodes"]} == {"cached"}
    assert all("/objects/" in n["series"] for n in m["nodes"] if n["stage"] == "train")
    check_metrics_report(m, (run_dir(project) / "report.html").read_text())


def check_metrics_report(m: dict, html: str) -> None:
    page = Page(html)
    assert page.tags["script"] == 0 and "<script" not in html  # the SVG output's script is inside base64
    charts = curve_svgs(html)
    assert len(charts) == 2 + 3 * 2  # loss and acc<i> overlaid, then per node
    loss = next(c for c in charts if texts(c)[0] == "train · loss")
    assert {"lr=0.1", "lr=0.2", "lr=0.3 (1 not finite)"} <= set(texts(loss))
    assert "step (value axis logarithmic)" in texts(loss)  # 9 down to 1e-5
    assert [len(points) for points in line_paths(loss)] == [40, 40, 40]
    assert "train · acc<i>" in page.text and "train · acc&lt;i&gt;" in html

    by_stage = {(n["stage"], n["param_set"]): n for n in m["nodes"]}
    assert "output_paths" not in by_stage[("train", "sweep[train.lr=0.1]")]  # a pickle: nothing to show
    shown = re.findall(r'<img src="data:([^;]+);base64,([^"]+)" alt="([^"]+)"', html)
    assert sorted((mime, alt) for mime, _, alt in shown) == sorted(
        [("image/png", "plots/pred.png")] * 3 + [("image/svg+xml", "plots/drawing.svg")] * 3 + [("image/png", "summary")])
    pngs = {base64.b64decode(data) for mime, data, alt in shown if alt == "plots/pred.png"}
    stored = {(Path(by_stage[("evaluate", s)]["output_paths"]["plots"]) / "pred.png").read_bytes() for s in m["param_sets"]}
    assert pngs == stored and len(stored) == 3  # the stored files, byte for byte
    assert "notes.txt" not in page.text

    # the comparison: a row per set, lr differing, final metrics with the best of each marked
    table = html[html.index('<table class="compare">'):]
    table = table[:table.index("</table>")]
    head = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
    assert head == ["set", "train.lr", "loss ↓", "acc&lt;i&gt; ↓", "rel_l2 ↓", "n_test ↓", "compute time"]
    rows = re.findall(r'<tr><td class="set">(.*?)</td>(.*?)</tr>', table)
    assert [name for name, _ in rows] == list(m["param_sets"])
    marked = [(name, re.findall(r'title="best: the lowest (.*?)">(.*?)</td>', cells)) for name, cells in rows]
    assert [(name, found) for name, found in marked if found] == [
        ("sweep[train.lr=0.1]", [("acc&lt;i&gt;", "0.9852")]),
        ("sweep[train.lr=0.2]", [("loss", "0.001329")]),  # lr=0.3's last loss is NaN: not a contender
        ("sweep[train.lr=0.3]", [("rel_l2", "6.367e-07")])]  # n_test: all equal, nothing marked
    assert "comparison</a> above" in html  # the parameter sets section does not repeat what differs
    assert "evaluate · plots/pred.png" in page.text and "summary · summary" in page.text


# ---- in a real browser ---------------------------------------------------------------------------

DOM = """(async () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const dag = document.querySelector("svg.orch-dag");
  const curves = [...document.querySelectorAll("#metrics > .charts svg.orch-curve")];
  const lines = curves.flatMap(svg => [...svg.querySelectorAll('path[stroke-width="1.8"]')])
    .map(p => ({length: p.getTotalLength(), box: box(p)}));
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => { i.loading = "eager"; return i.decode().catch(() => null); }));
  const first = curves[0].getBoundingClientRect();
  return {dag: dag ? {box: box(dag), boxes: dag.querySelectorAll('g > rect[rx="6"]').length} : null,
          curves: curves.length, titles: curves.map(s => s.querySelector("text").textContent), lines,
          images: imgs.map(i => [i.alt, i.naturalWidth, i.naturalHeight, box(i)[0]]),
          first_curve: {x: first.left + scrollX, y: first.top + scrollY, width: first.width, height: first.height},
          best: document.querySelectorAll("table.compare td.best").length,
          page_width: document.documentElement.scrollWidth, page_height: document.documentElement.scrollHeight,
          scripts: document.scripts.length};
})()"""


@pytest.mark.usefixtures("require_chromium")
def test_the_report_of_a_real_sweep_in_a_browser(project, tmp_path):
    """Through the real CLI, then in headless Chromium (DevTools protocol): nothing on the console (no
    error, no failed load), the DAG and the metric curves drawn with a size, every image decoded,
    the first chart painted in its colours; and a screenshot of the page in the test's directory."""
    metrics_project(project)
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")
    report_file = run_dir(project) / "report.html"

    with Chromium(tmp_path, WINDOW) as browser:
        page = browser.page()
        page.open(report_file.as_uri(), *WINDOW)
        dom = page.evaluate(DOM)
        page.evaluate("1")  # a round trip: console events sent meanwhile are in
        console = page.console()
        clip = dom["first_curve"]
        chart_png = base64.b64decode(page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                               clip={**clip, "scale": 1})["data"])
        whole = {"x": 0, "y": 0, "width": WINDOW[0], "height": dom["page_height"], "scale": 1}
        (tmp_path / "report-full.png").write_bytes(base64.b64decode(
            page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=whole)["data"]))
    assert [entry for entry in console if entry[0] in ("error", "warning")] == [], console
    assert dom["scripts"] == 0 and dom["page_width"] <= WINDOW[0]
    assert dom["dag"] and dom["dag"]["boxes"] == 7 and min(dom["dag"]["box"]) > 50  # 3 train, 3 evaluate, summary
    assert dom["best"] == 3  # the comparison, best values marked
    assert dom["curves"] == 2 and dom["titles"] == ["train · loss", "train · acc<i>"]
    assert len(dom["lines"]) == 6 and all(line["length"] > 100 and line["box"][0] > 100 for line in dom["lines"])
    assert len(dom["images"]) == 7 and all(w > 0 and h > 0 and shown > 0 for _, w, h, shown in dom["images"])
    assert sorted((alt, w, h) for alt, w, h, _ in dom["images"])[0] == ("plots/drawing.svg", 80, 50)

    width, height, pixels = _png_rgb(chart_png)  # the first chart as painted: its three lines' colours
    assert (width, height) == (round(clip["width"]), round(clip["height"]))
    for colour in curves.PALETTE[:3]:
        rgb = bytes.fromhex(colour[1:])
        assert sum(p == rgb for row in pixels for p in row) > 150, colour

    assert (tmp_path / "report-full.png").stat().st_size > 100_000  # the whole page, for people to look at
    shot = tmp_path / "report.png"
    chromium(tmp_path, report_file, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert len(set(_png_pixels(data))) > 16  # not a blank page

