"""`orch graph` in the terminal: the DAG as text trees (runs/tree.py) through the real CLI."""

from __future__ import annotations

import os
import pty
import subprocess

from conftest import ORCH, pipeline

from orchestrator.runs import tree

BASE = ("experiment.py", "-p", "params/base.yaml")


def lines(text: str) -> list[str]:
    """The output's lines with runs of spaces (the aligned state column) as one space."""
    return [" ".join(line.split()) for line in text.splitlines()]


def graph(project, *args: str) -> list[str]:
    proc = project.orch("graph", *args)
    assert "\x1b" not in proc.stdout and proc.stderr == ""  # not a terminal: no colour codes
    return lines(proc.stdout)


def test_a_chain_shows_each_node_state_and_why(project):
    pipeline(project)
    assert graph(project, *BASE) == [
        "base",
        "evaluate pending (waits on train)",
        "└── model ← train pending (waits on make_data)",
        "└── data ← make_data will run (never ran)",
        "",
        "3 nodes in 1 parameter set: 1 will run, 2 pending",
    ]
    project.orch("run", *BASE)
    project.reset_counts()
    assert graph(project, *BASE, "-S", "train.lr=0.4") == [
        "base",
        "evaluate pending (waits on train)",
        "└── model ← train will run (parameter train.lr changed: 0.1 -> 0.4)",
        "└── data ← make_data cached",
        "",
        "3 nodes in 1 parameter set: 1 will run, 1 pending, 1 cached",
    ]
    raw = project.orch("graph", *BASE).stdout.splitlines()
    assert raw[2].startswith("└── model ← train ") and raw[3].startswith("    └── data ← make_data ")
    assert len({line.index("cached") for line in raw[1:4]}) == 1  # one aligned state column
    assert project.counts() == {}  # planned only: nothing ran


def diamond(p):
    """src feeds left and right, join reads both: src has two consumers."""
    p.write("stages/d.py", '''
        from orchestrator import stage, PickleCacher
        from stages.counting import count

        @stage(outputs=["raw"], cachers=[PickleCacher])
        def src(record):
            count("src")
            return record.params.n

        @stage(inputs=["raw"], outputs=["a"], cachers=[PickleCacher])
        def left(record, raw):
            return raw + 1

        @stage(inputs=["raw"], outputs=["b"], cachers=[PickleCacher])
        def right(record, raw):
            return raw * record.params.k

        @stage(inputs=["a", "b"], outputs=["total"], cachers=[PickleCacher])
        def join(record, a, b):
            return a + b
    ''')
    p.write("experiment.py", '''
        from stages.d import src, left, right, join

        def run(record):
            src(record)
            left(record)
            right(record)
            join(record)
    ''')
    p.write("params/base.yaml", "n: 1\nk: 2\n")


def test_a_diamond_prints_the_shared_producer_once(project):
    diamond(project)
    project.orch("run", *BASE)
    out = graph(project, *BASE, "-S", "k=3")
    assert out == [
        "base",
        "join pending (waits on right)",
        "├── a ← left cached",
        "│ └── raw ← src cached",
        "└── b ← right will run (parameter k changed: 2 -> 3)",
        "└── raw ← src (*) cached",
        "",
        "4 nodes in 1 parameter set: 1 will run, 1 pending, 2 cached",
        "(*): shown above",
    ]
    raw = project.orch("graph", *BASE).stdout
    assert "│   └── raw ← src " in raw and "    └── raw ← src (*) " in raw


def sweep(p, lrs, tag=1):
    """make_data (data.* only: one computation for every set), train over a sweep of train.lr that
    reads train.warmup only for lr > 0.15, evaluate, and an aggregate table reading report.tag."""
    p.write("stages/s.py", '''
        from orchestrator import stage, aggregate, PickleCacher, JsonCacher
        from stages.counting import count

        @stage(outputs=["data"], cachers=[PickleCacher])
        def make_data(record):
            count("make_data")
            return list(range(record.params.data.n))

        @stage(inputs=["data"], outputs=["model"], cachers=[PickleCacher])
        def train(record, data):
            count("train")
            lr = record.params.train.lr
            if lr > 0.15:  # only the larger rates warm up
                lr += record.params.train.warmup
            return sum(data) * lr

        @stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
        def evaluate(record, model):
            return {"score": model + 1}

        @aggregate(inputs=["score"], outputs=["table"], cachers=[JsonCacher])
        def table(record, score):
            sets = record.param_sets
            return {name: [s["score"], sets[name].report.tag] for name, s in score.items()}
    ''')
    p.write("experiment.py", '''
        from stages.s import make_data, train, evaluate, table

        def run(record):
            evaluate(train(make_data(record)))

        def aggregate(records):
            table(records)
    ''')
    p.write("params/sweep.yaml", f'''
        data:
          n: 5
        train:
          lr: 0.1
          warmup: 1
        report:
          tag: {tag}
        sweep:
          train.lr: {list(lrs)}
    ''')


SWEEP = ("experiment.py", "-p", "params/sweep.yaml")


def test_a_sweep_shows_which_set_is_cached_and_why_the_other_runs(project):
    sweep(project, [0.1, 0.2])
    project.orch("run", *SWEEP)
    out = graph(project, *SWEEP, "-S", "train.warmup=3")
    assert out == [
        "sweep[train.lr=0.1]",
        "evaluate cached",
        "└── model ← train cached",
        "└── data ← make_data ×2 sets cached",  # one computation: printed once, with its sets
        "",
        "sweep[train.lr=0.2]",
        "evaluate pending (waits on train)",
        "└── model ← train will run (parameter train.warmup changed: 1 -> 3)",
        "└── data ← make_data ×2 sets (*) cached",
        "",
        "aggregate",
        "table pending (waits on evaluate)",
        "├── score ← evaluate [sweep[train.lr=0.1]] (*) cached",
        "└── score ← evaluate [sweep[train.lr=0.2]] (*) pending",
        "",
        "7 nodes in 2 parameter sets: 1 will run, 2 pending, 4 cached",
        "(*): shown above",
    ]


def test_an_aggregate_says_why_and_folds_its_inputs(project):
    sweep(project, [0.1, 0.2, 0.3, 0.4])
    project.orch("run", *SWEEP)
    sweep(project, [0.1, 0.2, 0.3, 0.4], tag=2)  # only the aggregate reads report.tag
    out = graph(project, *SWEEP)
    assert out[-6:] == [
        "aggregate",
        "table will run (parameter report.tag changed in 4 sets)",
        "└── score ← evaluate ×4 sets (*) 4 cached",  # 4 inputs shown above: one line
        "",
        "13 nodes in 4 parameter sets: 1 will run, 12 cached",
        "(*): shown above",
    ]
    assert out.count("└── data ← make_data ×4 sets cached") == 1
    assert out.count("└── data ← make_data ×4 sets (*) cached") == 3
    assert sum(line.startswith("sweep[train.lr=") for line in out) == 4


def test_a_large_sweep_is_summed_up_per_stage(project):
    lrs = [round(0.01 * i, 2) for i in range(1, 71)]  # 70 sets, 211 nodes: above tree.NODE_LIMIT
    sweep(project, lrs)
    project.orch("run", *SWEEP)
    project.reset_counts()
    out = graph(project, *SWEEP, "-S", "train.warmup=5")  # lr > 0.15 read it: 55 sets re-train
    assert out == [
        "make_data ×70 sets cached",
        "train 70 nodes: 55 will run, 15 cached",
        "├── data ← make_data",
        "├── 55 sets will run (parameter train.warmup changed: 1 -> 5)",
        "│ sweep[train.lr=0.16], sweep[train.lr=0.17], sweep[train.lr=0.18] … and 52 more",
        "└── 15 sets cached",
        "sweep[train.lr=0.01], sweep[train.lr=0.02], sweep[train.lr=0.03] … and 12 more",
        "evaluate 70 nodes: 55 pending, 15 cached",
        "├── model ← train",
        "├── 55 sets pending (waits on train)",
        "│ sweep[train.lr=0.16], sweep[train.lr=0.17], sweep[train.lr=0.18] … and 52 more",
        "└── 15 sets cached",
        "sweep[train.lr=0.01], sweep[train.lr=0.02], sweep[train.lr=0.03] … and 12 more",
        "table [aggregate] pending (waits on evaluate)",
        "└── score ← evaluate ×70 sets",
        "",
        "211 nodes in 70 parameter sets: 55 will run, 56 pending, 100 cached",
        "one tree per stage (211 nodes; --nodes prints one tree per parameter set)",
    ]
    every = graph(project, *SWEEP, "-S", "train.warmup=5", "--nodes")  # asked for: one tree per set
    assert sum(line.startswith("sweep[train.lr=") for line in every) == 70
    assert "└── model ← train will run (parameter train.warmup changed: 1 -> 5)" in every
    assert project.counts() == {}


def test_the_stage_summary_caps_the_reasons_it_lists():
    """Reasons that differ by set (each its own value) are listed up to GROUPS_SHOWN per state, then
    summed up; a state with one reason is one line whatever its size."""
    rows = [{"id": i, "stage": "train", "stage_id": "s:train", "param_set": f"s[{i}]", "status": "run",
             "reason": f"parameter train.lr changed: 0 -> {i}", "inputs": []} for i in range(100)]
    rows += [{"id": 100 + i, "stage": "train", "stage_id": "s:train", "param_set": f"t[{i}]", "status": "cached",
              "reason": "", "inputs": []} for i in range(50)]
    shown = tree.GROUPS_SHOWN
    assert lines(tree.render(rows)) == [
        "train 150 nodes: 100 will run, 50 cached",
        *(f"├── s[{i}] will run (parameter train.lr changed: 0 -> {i})" for i in range(shown)),
        f"├── {100 - shown} sets will run ({100 - shown} other reasons)",
        f"│ s[{shown}], s[{shown + 1}], s[{shown + 2}] … and {100 - shown - 3} more",
        "└── 50 sets cached",
        "t[0], t[1], t[2] … and 47 more",
        "",
        "150 nodes in 150 parameter sets: 100 will run, 50 cached",
        "one tree per stage (150 nodes; --nodes prints one tree per parameter set)",
    ]


def test_colours_only_in_a_terminal(project):
    pipeline(project)
    project.orch("run", *BASE)
    master, slave = pty.openpty()
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ORCH_CACHE", None)
    proc = subprocess.Popen([*ORCH, "graph", *BASE, "-S", "train.lr=0.4"], cwd=project.root, env=env,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    proc.stderr.close()
    text = b"".join(chunks).decode()
    assert "\x1b[33m\x1b[1mwill run\x1b[0m (parameter train.lr changed: 0.1 -> 0.4)" in text
    assert "\x1b[32mcached\x1b[0m" in text and "\x1b[33mpending\x1b[0m" in text
    plain = project.orch("graph", *BASE, "-S", "train.lr=0.4").stdout
    assert "\x1b" not in plain and "will run (parameter train.lr changed: 0.1 -> 0.4)" in plain


def test_format_or_output_still_writes_a_picture(project):
    pipeline(project)
    out = project.orch("graph", *BASE, "-f", "dot").stdout
    assert out.strip() == "dag.dot: 3 nodes, 1 to run, 2 pending, 0 cached"
    assert (project.root / "dag.dot").read_text().startswith("digraph orch {")
    out = project.orch("graph", *BASE, "-o", "pic.svg").stdout
    assert out.startswith("pic.svg: 3 nodes") and (project.root / "pic.svg").read_text().startswith("<svg")
    assert not (project.root / "dag.svg").exists()
    assert project.orch("graph", *BASE, "-o", "-").stdout.startswith("<svg")
