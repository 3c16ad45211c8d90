"""Resources (`@stage(resources=...)`, a parameter file's `orch: {resources: ...}`, `--slurm-*`): validated
where they are written, and never part of a key. No cluster needed: a local run must find the same
entries whatever the resources say (a wrong miss would re-run a long stage for nothing)."""

from __future__ import annotations

import pytest

from orchestrator.errors import ParamsError, StageDefinitionError
from orchestrator.resources import check, check_orch_section, for_node, time_minutes

STAGE = '''
from orchestrator import stage, PickleCacher
from stages.counting import count

CPUS = {cpus}

@stage(outputs=["y"], cachers=[PickleCacher], resources={{"cpus": CPUS, "mem": "{mem}", "time": "01:00:00"}})
def work(record):
    count("work")
    return record.params.x * 2
'''


def _project(project, cpus=1, mem="1G", orch=""):
    project.write("stages/work.py", STAGE.format(cpus=cpus, mem=mem))
    project.write("experiment.py", '''
        from stages.work import work

        def run(record):
            work(record)
    ''')
    project.write("params/p.yaml", "x: 3\n" + orch)
    return ("run", "experiment.py", "-p", "params/p.yaml")


def test_changing_resources_keeps_the_cache_hit(project):
    args = _project(project)
    project.orch(*args)
    assert project.counts() == {"work": 1}
    # the declaration's resources, a module-level name they use, and the parameter file's orch: section
    _project(project, cpus=4, mem="64G", orch="orch:\n  resources:\n    work: {partition: gpu, gpus: 2}\n")
    project.orch(*args)
    assert project.counts() == {"work": 1}
    assert project.statuses() == {("work", "p"): "cached"}
    # ...while a parameter still counts
    project.write("params/p.yaml", "x: 4\n")
    project.orch(*args)
    assert project.counts() == {"work": 2}


@pytest.mark.parametrize("resources, words", [
    ({"gpu": 1}, ["unknown resource 'gpu'", "did you mean 'gpus'"]),
    ({"cpus": 0}, ["cpus=0", "integer >= 1"]),
    ({"mem": "lots"}, ["mem='lots'", "32G"]),
    ({"time": "soon"}, ["time='soon'", "HH:MM:SS"]),
    ({"partition": 3}, ["partition=3", "non-empty string"]),
    ("cpus=4", ["must be a mapping"]),
])
def test_a_wrong_resource_is_refused_at_declaration_naming_the_stage(resources, words):
    from orchestrator import stage

    with pytest.raises(StageDefinitionError) as e:
        @stage(outputs=["y"], resources=resources)
        def train(record):
            return 1
    assert str(e.value).startswith("@stage ") and ".train (" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_resource_values_and_their_merge_order():
    assert time_minutes("04:00:00") == 240 and time_minutes("1-00:00:00") == 1440 and time_minutes(90) == 90
    assert time_minutes("10") == 10 and time_minutes("1:30") == 2 and time_minutes("2-3") == 2 * 1440 + 180
    assert check({"mem": 2048, "gpus": 0}, "x") == {"mem": 2048, "gpus": 0}

    class S:
        name, resources = "train", {"cpus": 8, "time": "04:00:00", "partition": "gpu"}

    orch = {"resources": {"train": {"time": "08:00:00", "mem": "32G"}}}
    assert for_node(S, orch, {"partition": "debug", "time": None}) == {
        "cpus": 8, "time": "08:00:00", "partition": "debug", "mem": "32G"}


@pytest.mark.parametrize("section, words", [
    ({"resource": {}}, ["unknown key orch.resource", "resources"]),
    ({"resources": {"train": {"gpu": 1}}}, ["orch.resources.train", "unknown resource 'gpu'"]),
    ({"resources": ["train"]}, ["must map stage names"]),
    ("big", ["'orch' must be a mapping"]),
])
def test_a_wrong_orch_section_is_refused_naming_the_file(section, words):
    with pytest.raises(ParamsError) as e:
        check_orch_section(section, "params/p.yaml")
    assert "params/p.yaml" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_orch_section_errors_through_the_cli(project):
    args = _project(project, orch="orch:\n  resources:\n    wrk: {cpus: 2}\n")
    proc = project.orch(*args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "params/p.yaml: orch.resources names stage 'wrk'" in proc.stderr and "did you mean 'work'" in proc.stderr
    project.write("params/p.yaml", "x: 3\n+orch: {}\n")
    proc = project.orch(*args, check=False)
    assert proc.returncode == 1 and "'orch' is reserved" in proc.stderr, proc.stderr
    # an orch: section in a base is merged along extends, and is no parameter the child could change
    project.write("params/base.yaml", "x: 3\norch:\n  resources:\n    work: {cpus: 2}\n")
    project.write("params/p.yaml", "extends: base.yaml\norch:\n  resources:\n    work: {time: 5}\n")
    project.orch(*args)
    from orchestrator.params import load_params

    (ps,) = load_params([str(project.root / "params/p.yaml")])
    assert ps.values == {"x": 3} and ps.orch == {"resources": {"work": {"cpus": 2, "time": 5}}}


def test_slurm_options_need_the_slurm_executor_and_a_cluster(project):
    args = _project(project)
    proc = project.orch(*args, "--slurm-time", "10", check=False)
    assert proc.returncode == 1 and "--slurm-time only apply with --executor slurm" in proc.stderr
    proc = project.orch(*args, "--executor", "slurm", "-j", "2", check=False)
    assert proc.returncode == 1 and "--parallel is for local runs" in proc.stderr
    proc = project.orch(*args, "--executor", "slurm", "--slurm-time", "whenever", check=False)
    assert proc.returncode == 1 and "time='whenever'" in proc.stderr and "Traceback" not in proc.stderr
    proc = project.orch(*args, "--executor", "slurm", check=False, env={"PATH": "/nonexistent"})
    import importlib.util

    expected = "`scontrol` not found" if importlib.util.find_spec("submitit") else "needs submitit: pip install"
    assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (project.root / ".orch" / "runs").exists()  # refused before the run is recorded
    assert project.counts() == {}


def test_submitit_is_imported_only_when_the_slurm_executor_runs():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import orchestrator.cli\n"
        "try:\n"
        "    orchestrator.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "orchestrator.cli.main(['run', '--help'], standalone_mode=False)\n"
        "assert 'orchestrator.resources' not in sys.modules, 'orch --help imports what it did before'\n"
        "import orchestrator.executors.slurm, orchestrator.executors.slurmjob, orchestrator.executors.slurmctl\n"
        "assert 'submitit' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--executor [local|slurm]" in out.stdout
