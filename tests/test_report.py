"""The HTML run report, the DAG picture and `orch graph` / `orch report` / `orch show --html`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from html import escape as html_escape
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import pipeline

from orchestrator.runs import drawing, report
from orchestrator.runs.report import COMPACT_NODES, ROWS_PER_STATUS, render, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Parses a page and fails on unbalanced tags; collects the tags seen and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[str] = []
        self.tags: Counter = Counter()
        self.chunks: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] += 1

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.chunks.append(data)


def failing_project(p):
    """Two sets; `train` fails on one of them, `evaluate` and the aggregate `table` are then skipped."""
    p.write("stages/s.py", '''
        from orchestrator import stage, aggregate, PickleCacher, JsonCacher

        @stage(outputs=["data"], cachers=[PickleCacher])
        def make_data(record):
            return list(range(record.params.data.n))

        @stage(inputs=["data"], outputs=["model"], cachers=[PickleCacher])
        def train(record, data):
            if record.params.train.lr > 0.15:
                raise ValueError("learning rate too <big>")
            return sum(data) * record.params.train.lr

        @stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
        def evaluate(record, model):
            return {"score": model + 1, "label": record.params.data.label}

        @aggregate(inputs=["score"], outputs=["table"], cachers=[JsonCacher])
        def table(record, score):
            return score
    ''')
    p.write("experiment.py", '''
        from stages.s import make_data, train, evaluate, table

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            table(records)
    ''')
    p.write("params/p.yaml", '''
        data:
          n: 10
          label: "<script>alert('x')</script>"
        train:
          lr: 0.1
        sweep:
          train.lr: [0.1, 0.2]
    ''')
    return p


def run_dir(p) -> Path:
    return p.root / ".orch" / "runs" / p.manifest()["run_id"]


def test_every_run_leaves_a_report(project):
    failing_project(project)
    proc = project.orch("run", "experiment.py", "-p", "params/p.yaml", check=False)
    assert proc.returncode == 1
    html = (run_dir(project) / "report.html").read_text()
    page = Page(html)
    assert page.tags["svg"] == 1 and page.tags["script"] == 0  # no script of ours, none injected
    for name in ("make_data", "train", "evaluate", "table"):
        assert name in page.text
    for chip in ("3 ran", "1 cached", "1 failed", "2 skipped"):
        assert chip in page.text
    assert "ValueError: learning rate too <big>" in page.text  # the error, as text
    assert 'raise ValueError("learning rate too <big>")' in page.text  # its traceback
    assert "<script>alert('x')</script>" in page.text  # the parameter value, shown as text...
    assert "<script>" not in html and "&lt;script&gt;" in html  # ...because it was escaped
    assert project.manifest()["run_id"] in page.text


def test_report_and_show_html_rewrite_a_report(project):
    pipeline(project)
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")
    report = run_dir(project) / "report.html"
    report.unlink()
    assert project.orch("report").stdout.strip() == str(report)
    assert "evaluate" in Page(report.read_text()).text
    report.unlink()
    assert project.orch("show", "--html").stdout.strip() == str(report)
    assert report.is_file()
    out = project.orch("report", project.manifest()["run_id"], "-o", "out/r.html").stdout
    assert out.strip() == "out/r.html" and "train" in Page((project.root / "out" / "r.html").read_text()).text
    missing = project.orch("report", "no-such-run", check=False)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr


def test_graph_draws_the_next_run_without_running_it(project):
    pipeline(project)
    project.orch("run", "experiment.py", "-p", "params/base.yaml")  # train.lr=0.1 is now cached
    project.reset_counts()
    runs_before = sorted((project.root / ".orch" / "runs").iterdir())
    out = project.orch("graph", "experiment.py", "-p", "params/sweep.yaml", "-o", "dag.svg").stdout
    assert "6 nodes, 1 to run, 1 pending, 4 cached" in out
    svg = ET.fromstring((project.root / "dag.svg").read_text())  # well-formed XML
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert {"make_data", "train", "evaluate"} <= set(texts)

    dot = project.orch("graph", "experiment.py", "-p", "params/sweep.yaml", "-f", "dot", "-o", "-").stdout
    assert dot.startswith("digraph orch {") and dot.rstrip().endswith("}")
    declared = re.findall(r"^  (n\d+) \[label=", dot, re.M)
    assert declared == [f"n{i}" for i in range(5)]  # make_data: one cached computation shared by both sets
    assert 'n0 [label="make_data\\n×2 sets"' in dot
    edges = set(re.findall(r"^  (n\d+) -> (n\d+) ", dot, re.M))
    assert edges == {("n0", "n1"), ("n1", "n2"), ("n0", "n3"), ("n3", "n4")}
    fills = Counter(line.split('fillcolor="')[1][:7] for line in dot.splitlines() if "fillcolor=" in line)
    assert fills == {drawing.COLOURS["cached"][0]: 3, drawing.COLOURS["run"][0]: 1, drawing.COLOURS["pending"][0]: 1}

    stages = project.orch("graph", "experiment.py", "-p", "params/sweep.yaml", "--stages", "-o", "stages.gv").stdout
    text = (project.root / "stages.gv").read_text()
    assert "stages.gv: 6 nodes" in stages and len(re.findall(r"^  n\d+ -> ", text, re.M)) == 2
    assert "train\\n1 run, 1 cached" in text
    assert project.counts() == {}  # nothing ran
    assert sorted((project.root / ".orch" / "runs").iterdir()) == runs_before  # and no run was recorded


def test_graph_png_without_graphviz_says_what_to_do(project):
    pipeline(project)
    env = {"PATH": str(Path(sys.executable).parent)}  # no Graphviz there
    proc = project.orch("graph", "experiment.py", "-p", "params/base.yaml", "-o", "dag.png", check=False, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Graphviz" in proc.stderr and "--format svg" in proc.stderr
    assert not (project.root / "dag.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graph_png_with_graphviz(project):
    pipeline(project)
    project.orch("graph", "experiment.py", "-p", "params/base.yaml", "-f", "png", "-o", "dag.png")
    assert (project.root / "dag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def sweep_project(p):
    """pipeline(p) and an aggregate `table` over a 4-point sweep of train.lr that reads each set's
    train.lr and report.tag (which nothing else reads); make_data (data.* only) is shared by all."""
    pipeline(p)
    p.write("stages/agg.py", '''
        from orchestrator import aggregate, JsonCacher

        @aggregate(inputs=["score"], outputs=["table"], cachers=[JsonCacher])
        def table(record, score):
            sets = record.param_sets
            return {name: [s["score"], sets[name].train.lr, sets[name].report.tag] for name, s in score.items()}
    ''')
    p.write("experiment.py", '''
        from stages.data import make_data, train, evaluate
        from stages.agg import table

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            table(records)
    ''')
    p.write("params/sweep4.yaml", '''
        extends: base.yaml
        +report:
          tag: 1
        sweep:
          train.lr: [0.1, 0.2, 0.3, 0.4]
    ''')
    return p


def svg_of(html: str) -> ET.Element:
    """The report's inline SVG, parsed as XML."""
    return ET.fromstring(html[html.index("<svg"):html.index("</svg>") + len("</svg>")])


SVG = "{http://www.w3.org/2000/svg}"


def drawn_boxes(svg: ET.Element) -> list[tuple[str, str]]:
    """(title, subtitle) of every box of a drawing (a box: a <g> with a tooltip, a rect and two texts)."""
    out = []
    for g in svg.iter(f"{SVG}g"):
        texts = [t.text for t in g.findall(f"{SVG}text")]
        if g.find(f"{SVG}title") is not None and len(texts) == 2:
            out.append((texts[0], texts[1]))
    return out


def test_a_computation_shared_by_the_sets_is_drawn_once(project):
    """make_data reads only data.*: one computation for the 4 sweep points (it runs once, the other sets
    find it cached), so the report draws one box `make_data ×4 sets` with an edge to each set's train.
    train shares make_data's output and so its key across the sets too, but reads a different train.lr
    in each: 4 computations, 4 boxes, in the report and in `orch graph` (whose plan rows show no reads:
    it draws every node)."""
    sweep_project(project)
    project.orch("run", "experiment.py", "-p", "params/sweep4.yaml")
    m = project.manifest()
    assert [n["status"] for n in m["nodes"] if n["stage"] == "make_data"].count("ran") == 1
    html = (run_dir(project) / "report.html").read_text()
    svg = svg_of(html)
    boxes = drawn_boxes(svg)
    assert boxes.count(("make_data", "×4 sets")) == 1 and [t for t, _ in boxes].count("make_data") == 1
    assert [t for t, _ in boxes].count("train") == 4 and [t for t, _ in boxes].count("evaluate") == 4
    assert len(boxes) == 1 + 4 + 4 + 1  # make_data, train, evaluate per set, table
    shared = next(g for g in svg.iter(f"{SVG}g") if [t.text for t in g.findall(f"{SVG}text")][:2] == ["make_data", "×4 sets"])
    tip = shared.find(f"{SVG}title").text
    assert "one computation, shared by 4 parameter sets" in tip and all(f"[{name}]" in tip for name in m["param_sets"])
    legend = [t.text for t in svg.iter(f"{SVG}text")][:3]
    assert legend == ["13 nodes", "ran 10", "cached 3"]  # the legend still counts nodes
    edges = [p for p in svg.iter(f"{SVG}path") if p.find(f"{SVG}title") is not None]
    assert [p.find(f"{SVG}title").text for p in edges].count("data") == 4  # one edge to each train

    report = project.orch("report", "-o", "again.html").stdout.strip()  # re-rendered from the manifest alike
    assert drawn_boxes(svg_of((project.root / report).read_text())) == boxes

    # `orch graph` of the same plan (all cached): cached nodes name their entry, so alike
    dot = project.orch("graph", "experiment.py", "-p", "params/sweep4.yaml", "-f", "dot", "-o", "-").stdout
    labels = re.findall(r'^  n\d+ \[label="([^"]*)"', dot, re.M)
    assert len(labels) == 10 and sum(label.startswith("train\\nsweep4[") for label in labels) == 4
    assert "make_data\\n×4 sets" in labels


def test_what_an_aggregate_read_is_shown_by_parameter_set(project):
    """An aggregate records its reads as `<set_key(set)>.<path>` (`sweep[train%2Elr=0%2E1].train.lr`): the
    report shows them by parameter set and path, decoded; the reason sums a change up over the sets."""
    sweep_project(project)
    project.orch("run", "experiment.py", "-p", "params/sweep4.yaml")
    m = project.manifest()
    table = next(n for n in m["nodes"] if n["stage"] == "table")
    assert "sweep4[train%2Elr=0%2E1].train.lr" in table["reads"]  # what the manifest holds
    text = Page((run_dir(project) / "report.html").read_text()).text.replace("\xa0", " ")
    for lr in (0.1, 0.2, 0.3, 0.4):
        assert f"parameter set sweep4[train.lr={lr}]: train.lr = {lr}, report.tag = 1" in text
    assert "%2E" not in text

    project.orch("run", "experiment.py", "-p", "params/sweep4.yaml", "-S", "report.tag=2")  # only table re-runs
    assert project.statuses()[("table", "aggregate")] == "ran"
    html = (run_dir(project) / "report.html").read_text()
    text = Page(html).text
    reason = next(n["reason"] for n in project.manifest()["nodes"] if n["stage"] == "table")
    assert reason == "parameter report.tag changed in 4 sets"
    assert reason in text  # the node table
    tips = [g.find(f"{SVG}title").text for g in svg_of(html).iter(f"{SVG}g") if g.find(f"{SVG}title") is not None]
    assert any(reason in tip for tip in tips)  # the DAG
    assert "%2E" not in text


# ---- unit: the picture --------------------------------------------------------------------------

def chain_manifest(sets: int, stages: int, statuses=("cached", "cached", "ran")) -> dict:
    """A manifest like a sweep of `sets` chains of `stages` stages, plus an aggregate over every set
    (every node its own computation: keys and outputs differ)."""
    nodes, last = [], []
    for s in range(sets):
        prev = None
        for k in range(stages):
            nodes.append({"id": len(nodes), "stage": f"s{k}", "stage_id": f"stages.chain:s{k}", "param_set": f"p[seed={s}]",
                          "status": statuses[(s + k) % len(statuses)], "key": f"{s:04x}{k:04x}" * 8, "reason": "parameter seed changed",
                          "duration_s": 0.001, "inputs": [] if prev is None else [[f"x{k - 1}", prev, f"x{k - 1}"]],
                          "outputs": {f"x{k}": f"{k:04x}{s:04x}" * 8}, "reads": {"seed": s} if k == 0 else {}, "files": {}})
            prev = len(nodes) - 1
        last.append(prev)
    nodes.append({"id": len(nodes), "stage": "table", "stage_id": "stages.chain:table", "param_set": "aggregate",
                  "status": "failed", "key": None, "reason": "input x changed", "duration_s": 0.1,
                  "inputs": [["x", i, f"x{stages - 1}", f"p[seed={s}]"] for s, i in enumerate(last)], "outputs": {},
                  "reads": {}, "files": {}, "error": "KeyError: 'x'", "traceback": "Traceback ...\nKeyError: 'x'\n"})
    return {"run_id": "r1", "experiment": "/p/experiment.py", "argv": ["run", "experiment.py"], "status": "failed",
            "started": "2026-01-01T00:00:00.000+00:00", "finished": "2026-01-01T00:00:09.000+00:00", "duration_s": 9.0,
            "param_sets": {f"p[seed={s}]": {"seed": s, "data": {"n": 3}} for s in range(sets)}, "nodes": nodes}


def assert_layered(pic: drawing.Picture) -> None:
    """Every edge points to a later layer, and no two boxes overlap."""
    for s, d, _ in pic.edges:
        if s < d:
            assert pic.boxes[s].layer < pic.boxes[d].layer and pic.boxes[s].x < pic.boxes[d].x
    by_layer: dict[int, list] = {}
    for box in pic.boxes:
        by_layer.setdefault(box.layer, []).append(box.y)
    for ys in by_layer.values():
        ys.sort()
        assert all(b - a >= 38 for a, b in zip(ys, ys[1:]))


def test_small_runs_draw_every_node():
    m = chain_manifest(sets=4, stages=5)
    pic = drawing.layout(drawing.build(m["nodes"]))
    assert not pic.stages and len(pic.boxes) == 21 and len(pic.edges) == 4 * 4 + 4
    assert_layered(pic)
    assert pic.boxes[-1].layer == 5  # the aggregate after the longest chain
    Page(render(m))


def test_big_runs_draw_one_box_per_stage(tmp_path):
    m = chain_manifest(sets=20, stages=100)  # 2,001 nodes
    pic = drawing.layout(drawing.build(m["nodes"]))
    assert pic.stages and len(pic.boxes) == 101 and len(pic.edges) == 100
    assert_layered(pic)
    assert pic.boxes[0].counts == {"cached": 14, "ran": 6} and pic.boxes[-1].status == "failed"
    write_report(m, tmp_path / "report.html")
    page = Page((tmp_path / "report.html").read_text())
    assert "101 stages, 2,001 nodes" in page.text and "KeyError: 'x'" in page.text
    assert page.tags["tr"] < 3 * ROWS_PER_STATUS + 200  # the node table is capped...
    assert "not listed" in page.text  # ...and says so


def test_a_big_sweep_lists_what_ran_and_counts_what_was_cached_by_stage():
    """Above COMPACT_NODES nodes the node table lists no cached node (the stage table counts them by
    stage, the manifest keeps them); what ran, failed or was skipped is still listed; a smaller run
    lists its cached nodes as before."""

    def table_rows(page: str) -> list[str]:
        section = page[page.index('<section id="nodes">'):]
        return [r[:r.index("</tr>")] for r in section[:section.index("</section>")].split("<tr>")[1:]
                if "<th>" not in r]

    big = chain_manifest(sets=12, stages=100, statuses=("cached",) * 9 + ("ran",))  # 1,201 nodes
    assert len(big["nodes"]) > COMPACT_NODES
    html = render(big)
    Page(html)
    rows = table_rows(html)
    assert rows and not any("st-cached" in r for r in rows)  # no cached node listed...
    ran = sum(n["status"] == "ran" for n in big["nodes"])
    assert sum("st-ran" in r for r in rows) == ran == 120 and any("st-failed" in r for r in rows)  # every one
    cached = sum(n["status"] == "cached" for n in big["nodes"])
    assert f"its {cached:,} cached nodes are counted by stage in the" in html  # ...said once, with the count
    assert '<td title="stages.chain:s0">s0</td><td class=num>12</td>' in html  # the stage table counts them
    assert "Listing the first" not in html and "90 of these nodes are not listed" in html  # per set: its cached

    small = chain_manifest(sets=9, stages=100, statuses=("cached",) * 9 + ("ran",))  # 901 nodes
    assert len(small["nodes"]) <= COMPACT_NODES
    rows = table_rows(render(small))
    assert sum("st-cached" in r for r in rows) == ROWS_PER_STATUS


def test_stage_cycles_and_repeated_stages_still_draw():
    """Wiring may differ per parameter set (a -> b in one, b -> a in another) and a stage may be called
    twice on one record: the stage graph then has cycles, which must neither hang nor crash."""
    nodes = [
        {"id": 0, "stage": "a", "param_set": "one", "status": "ran", "inputs": []},
        {"id": 1, "stage": "b", "param_set": "one", "status": "ran", "inputs": [["x", 0, "x"]]},
        {"id": 2, "stage": "b", "param_set": "two", "status": "cached", "inputs": []},
        {"id": 3, "stage": "a", "param_set": "two", "status": "cached", "inputs": [["y", 2, "y"]]},
        {"id": 4, "stage": "a", "param_set": "two", "status": "cached", "inputs": [["x", 3, "x"]]},
    ]
    pic = drawing.build(nodes, stages=True)
    assert len(pic.boxes) == 2 and {(s, d) for s, d, _ in pic.edges} == {(0, 1), (1, 0), (0, 0)}
    ET.fromstring(drawing.svg(pic))
    assert_layered(drawing.layout(drawing.build(nodes, stages=False)))


def row(i, stage, set_name, status="cached", key="k", reads=None, outputs=None, inputs=()):
    return {"id": i, "stage": stage, "stage_id": f"stages:{stage}", "param_set": set_name, "status": status, "key": key,
            "reason": "", "inputs": [list(e) for e in inputs], "reads": reads or {}, "files": {},
            "outputs": {"out": "h"} if outputs is None else outputs}


def test_one_computation_is_one_box_only_when_the_rows_show_it():
    nodes = [
        row(0, "data", "a", "ran", "kd", {"data.n": 3}), row(1, "train", "a", "ran", "kt", {"lr": 0.1}, inputs=[("x", 0, "out")]),
        row(2, "data", "b", "cached", "kd", {"data.n": 3}), row(3, "train", "b", "ran", "kt", {"lr": 0.2}, inputs=[("x", 2, "out")]),
        row(4, "data", "c", "failed", "kd", {"data.n": 3}),  # a failure is its own box
        row(5, "data", "d", "cached", "kd", {"data.n": 4}),  # another value read: another computation
        row(6, "data", "e", "cached", None, {"data.n": 3}),  # no key
        row(7, "data", "f", "cached", "kd", {"data.n": 3}, outputs={}),  # no stored outputs (a plan's row)
    ]
    pic = drawing.build(nodes, stages=False)
    assert [(b.title, b.subtitle) for b in pic.boxes] == [
        ("data", "×2 sets"), ("train", "a"), ("train", "b"), ("data", "c"), ("data", "d"), ("data", "e"), ("data", "f")]
    shared = pic.boxes[0]
    assert shared.status == "ran" and shared.counts == {"ran": 1, "cached": 1}
    assert shared.tooltip.startswith("data: one computation, shared by 2 parameter sets\n[a]\nran")
    assert sorted((s, d) for s, d, _ in pic.edges) == [(0, 1), (0, 2)]
    svg = ET.fromstring(drawing.svg(drawing.layout(pic)))
    assert [t.text for t in svg.iter(f"{SVG}text")][:3] == ["8 nodes", "failed 1", "ran 3"]  # nodes, not boxes
    assert 'n0 [label="data\\n×2 sets"' in drawing.dot(pic)


def test_shared_boxes_keep_the_boxes_in_topological_order():
    """Per set `seed` (reads differ) -> `prep` (reads nothing, same input content: one computation) ->
    `fit`; the shared prep comes after both seeds, so the boxes are re-ordered, every edge forward."""
    nodes = []
    for k, name in enumerate("ab"):
        base = 3 * k
        nodes += [row(base, "seed", name, "ran", f"ks{k}", {"seed": k}, {"out": f"s{k}"}),
                  row(base + 1, "prep", name, "ran" if k == 0 else "cached", "kp", {}, {"out": "p"}, [("x", base, "out")]),
                  row(base + 2, "fit", name, "ran", f"kf{k}", {}, {"out": f"f{k}"}, [("x", base + 1, "out")])]
    pic = drawing.layout(drawing.build(nodes, stages=False))
    assert [(b.title, b.subtitle) for b in pic.boxes] == [("seed", "a"), ("seed", "b"), ("prep", "×2 sets"),
                                                         ("fit", "a"), ("fit", "b")]
    assert all(s < d for s, d, _ in pic.edges) and len(pic.edges) == 4
    assert_layered(pic)


def test_user_text_is_escaped_everywhere():
    evil = '<img src=x onerror="alert(1)">'
    m = chain_manifest(sets=1, stages=2)
    for n in m["nodes"]:
        n.update(stage=evil, param_set=evil, reason=evil)
    m["nodes"][-1]["traceback"] = evil
    m["param_sets"] = {evil: {evil: evil, "x": {"y": [evil]}}}
    m["argv"] = [evil]
    page = Page(render(m))
    assert page.tags["img"] == 0 and evil in page.text
    ET.fromstring(drawing.svg(drawing.build(m["nodes"])))  # valid XML with the same text in it
    assert '\\"alert(1)\\"' in drawing.dot(drawing.build(m["nodes"]))


def test_unfinished_run_renders():
    page = Page(render({"run_id": "r2", "status": "running", "started": "2026-01-01T00:00:00+00:00", "nodes": [],
                        "param_sets": {"default": {}}}))
    assert "has not finished" in page.text


# ---- the report in a real browser ---------------------------------------------------------------

WINDOW = (1400, 1000)
needs_chromium = pytest.mark.usefixtures("require_chromium")  # skipped without it, unless ORCH_REQUIRE_BROWSER=1


def chromium(tmp_path: Path, page: Path, *action: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page` in a WINDOW-sized window at 1 device pixel per CSS pixel."""
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                           "--force-device-scale-factor=1", *action, page.as_uri()],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})


@needs_chromium
def test_report_renders_in_a_browser(tmp_path):
    report = tmp_path / "report.html"
    write_report(chain_manifest(sets=3, stages=4), report)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, report, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert len(set(_png_pixels(data))) > 16  # not a blank page of one colour


# The layout as the browser computed it, written into the page for --dump-dom to print. It runs in a
# test copy of the report only: the report itself stays script-free.
PROBE = """<script>(() => {
  const box = document.querySelector(".dag"), svg = box.querySelector("svg");
  const rect = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const boxes = [...svg.querySelectorAll("g > rect[rx]")].map(e => ({fill: e.getAttribute("fill"), ...rect(e)}));
  const out = {window: [innerWidth, innerHeight], page_scroll_width: document.documentElement.scrollWidth,
    dag: {...rect(box), client_width: box.clientWidth, scroll_width: box.scrollWidth, overflow_x: getComputedStyle(box).overflowX},
    svg: {...rect(svg), view_width: svg.viewBox.baseVal.width}, boxes};
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();</script>"""


def measure(tmp_path: Path, report: Path) -> dict:
    """The browser's layout of `report`: the DAG's box, the SVG, every drawn box (CSS pixels)."""
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"no layout from the browser: {dom[-500:]!r}"
    return json.loads(unescape(found.group(1)))


def wide_manifest(sets: int, stages: int) -> dict:
    """chain_manifest with long set names (sweep[train.lr=0.1,model.width=128]): wide node boxes."""
    m = chain_manifest(sets=sets, stages=stages)
    names = {f"p[seed={s}]": f"sweep[train.lr=0.{s},model.width={64 * (s + 1)}]" for s in range(sets)}
    for n in m["nodes"]:
        n["param_set"] = names.get(n["param_set"], n["param_set"])
        n["inputs"] = [e[:3] + [names[e[3]]] if len(e) > 3 else e for e in n["inputs"]]
    m["param_sets"] = {names[k]: v for k, v in m["param_sets"].items()}
    return m


@needs_chromium
def test_a_wide_dag_fits_a_1400_px_window(tmp_path):
    """The DAG is as wide as the page and scaled to it: its right edge, the aggregate's box, is in the
    window, painted. Checked twice: the layout the browser computed (a test copy of the report with a
    probe script, --dump-dom), and a screenshot of the real, script-free report in which the aggregate's
    box must show its fill colour where the layout says it is."""
    m = wide_manifest(sets=11, stages=5)  # 56 nodes, drawn node by node, 1,698 px wide
    pic = drawing.layout(drawing.build(m["nodes"]))
    assert not pic.stages and pic.width > WINDOW[0]  # wider than the window: the case that was clipped
    report = tmp_path / "report.html"
    write_report(m, report)
    assert "<script" not in report.read_text()

    lay = measure(tmp_path, report)
    assert lay["window"][0] == WINDOW[0]  # (--dump-dom's window is less tall: only the width is compared)
    dag, svg = lay["dag"], lay["svg"]
    assert lay["page_scroll_width"] <= WINDOW[0]  # the page does not scroll sideways...
    assert dag["scroll_width"] <= dag["client_width"]  # ...nor does the DAG's box: nothing to scroll to
    assert dag["left"] <= svg["left"] and svg["right"] <= dag["right"] <= WINDOW[0]
    scale = (svg["right"] - svg["left"]) / svg["view_width"]
    assert drawing.FIT_SCALE <= scale < 1  # shrunk to fit, not beyond the readable limit
    rightmost = max(lay["boxes"], key=lambda b: b["right"])
    assert rightmost["fill"] == drawing.COLOURS["failed"][0]  # the aggregate `table`, last in the chain
    assert rightmost["right"] <= dag["right"] and rightmost["bottom"] <= lay["window"][1] <= WINDOW[1]

    shot = tmp_path / "shot.png"
    chromium(tmp_path, report, f"--screenshot={shot}")
    width, height, pixels = _png_rgb(shot.read_bytes())
    assert (width, height) == WINDOW
    fill = bytes.fromhex(drawing.COLOURS["failed"][0][1:])
    inside = [pixels[y][x] for y in range(int(rightmost["top"]) + 3, int(rightmost["bottom"]) - 2)
              for x in range(int(rightmost["left"]) + 3, int(rightmost["right"]) - 2)]
    assert inside and sum(_near(p, fill) for p in inside) > 0.6 * len(inside)  # painted, not cut off


@needs_chromium
def test_a_dag_too_wide_to_shrink_scrolls_inside_its_box(tmp_path):
    """Shrinking stops at FIT_SCALE (labels stay legible); the rest scrolls inside the DAG's box,
    and the page itself never gets wider than the window."""
    m = chain_manifest(sets=2, stages=25)  # 51 nodes in 26 columns
    report = tmp_path / "report.html"
    write_report(m, report)
    lay = measure(tmp_path, report)
    dag, svg = lay["dag"], lay["svg"]
    assert lay["page_scroll_width"] <= WINDOW[0]
    scale = (svg["right"] - svg["left"]) / svg["view_width"]
    assert abs(scale - drawing.FIT_SCALE) < 0.01
    assert dag["overflow_x"] == "auto" and dag["scroll_width"] > dag["client_width"]  # reachable by scrolling
    assert dag["scroll_width"] >= svg["right"] - svg["left"]  # all of it


def _near(pixel: bytes, colour: bytes, tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def _png_rgb(data: bytes) -> tuple[int, int, list[list[bytes]]]:
    """Width, height and rows of RGB pixels of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour_type = data[24], data[25]
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    bpp = 3 if colour_type == 2 else 4
    raw, stride, rows, prev = _png_pixels(data), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append([bytes(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def _png_pixels(data: bytes) -> bytes:
    """The decompressed image data of a PNG (enough to tell a blank page from a drawn one)."""
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def test_the_reports_escape_is_html_escape():
    """drawing.escape stands in for html.escape (which a run would import just for this)."""
    samples = ["", "plain", "<script>alert('x')</script>", 'a "quoted" & \'single\'', "&amp; already", "&&<<>>\"\"''",
               "é ü ☃ \x00 \n\t", "<![CDATA[x]]>", "x" * 1000 + "&<>\"'"]
    for s in samples + [chr(c) for c in range(0x80)]:
        assert drawing.escape(s) == html_escape(s), s


def test_the_reports_escape_is_html_escape_on_random_text():
    """drawing.escape stands in for html.escape (not imported on a run): the same text for any input."""
    import html
    import random

    from orchestrator.runs.drawing import escape

    rng = random.Random(7)
    alphabet = "ab<>&\"' 1é中_-.\n\u00a0٣"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        assert escape(text) == html.escape(text), text


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_times_are_shown_in_local_time_as_datetime_shows_them(monkeypatch, tz):
    from datetime import datetime, timedelta, timezone

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        start = datetime(1971, 1, 1, tzinfo=timezone.utc)
        stamps = [(start + timedelta(seconds=i * 7_654_321 + 0.123)).isoformat(timespec="milliseconds")
                  for i in range(500)]  # the manifest's format: report._utc_seconds, without datetime
        stamps += ["2024-02-29T12:00:00.000+00:00", "2023-02-29T12:00:00.000+00:00", "2023-12-31T23:59:60.000+00:00",
                   "2026-12-02T03:18:50.419+01:00", "2026-12-02 03:18:50", "yesterday"]
        for stamp in stamps:
            try:
                expected = datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
            except ValueError:
                expected = stamp
            assert report._when(stamp) == expected, stamp
    finally:
        monkeypatch.undo()
        time.tzset()
