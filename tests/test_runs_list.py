"""`orch runs`: one aligned line per run, with the command that started it."""

from __future__ import annotations

from conftest import pipeline

from orchestrator.runs.console import COMMAND_CHARS, _command


def test_runs_lists_each_run_with_its_command(project):
    pipeline(project)
    project.orch("run", "experiment.py", "-p", "params/base.yaml")
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml", "-S", "data.n=12")
    ids = sorted(p.name for p in (project.root / ".orch" / "runs").iterdir() if p.name != "latest")

    lines = project.orch("runs").stdout.splitlines()
    assert len(lines) == 3  # one line per run, newest first
    assert [line.split()[0] for line in lines] == ids[::-1]
    assert lines[0].endswith("  orch run experiment.py -p params/sweep.yaml -S data.n=12")
    assert lines[1].endswith("  orch run experiment.py -p params/sweep.yaml")
    assert lines[2].endswith("  orch run experiment.py -p params/base.yaml")
    assert "2 sets" in lines[0] and "1 set " in lines[2]
    assert "  5 ran, 1 cached  " in lines[0]  # data.n changed: make_data once for both sets
    assert "  2 ran, 4 cached  " in lines[1]  # lr=0.2's train and evaluate
    assert "  3 ran  " in lines[2]
    starts = {line.index("orch run") for line in lines}
    assert len(starts) == 1  # the commands line up...
    assert len({line.index(" set") for line in lines}) == 1  # ...and so do the other columns
    assert len({line.index("ok") for line in lines}) == 1


def test_runs_shortens_a_long_command(project, tmp_path):
    """Absolute paths and --cache make a long line: --cache goes (the runs listed are that cache's),
    long paths keep their last two parts, and what is still too long is cut."""
    pipeline(project)
    cache = tmp_path / ("a-rather-long-directory-name-for-the-shared-cache" * 2)
    project.orch("run", str(project.root / "experiment.py"), "-p", str(project.root / "params" / "sweep.yaml"),
                 "--cache", str(cache), "-S", "data.n=11")
    full = f"orch run {project.root / 'experiment.py'} -p {project.root / 'params' / 'sweep.yaml'} --cache {cache}"
    assert len(full) > COMMAND_CHARS
    line, = project.orch("runs", "--cache", str(cache)).stdout.splitlines()
    assert line.endswith("  orch run …/proj/experiment.py -p …/params/sweep.yaml -S data.n=11")


def test_command_shortening():
    assert _command([]) == "-"  # a run started from Python (session.run_experiment) without argv
    assert _command(["run", "experiment.py", "-S", "label=a b"]) == "orch run experiment.py -S 'label=a b'"
    long = ["run", "experiment.py"] + [f"-S=train.p{i}={i}" for i in range(30)]
    short = _command(long)
    assert len(short) == COMMAND_CHARS and short.endswith("…") and short.startswith("orch run experiment.py -S=train.p0=0")
    assert _command(["run", "e.py", "--cache=/x/" + "y" * 100, "-p", "p.yaml"]) == "orch run e.py -p p.yaml"
