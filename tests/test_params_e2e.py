"""Strict parameter files through the real CLI: typos in sweeps, extending files and reserved words
are refused with a message naming the file, line and key (exit 1, no traceback, nothing runs); `+key`
adds a key that stages then read."""

from __future__ import annotations

from conftest import pipeline

RUN = ("run", "experiment.py", "-p")


def _refused(project, params: str, *extra: str, needles=()):
    proc = project.orch(*RUN, params, *extra, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr}"
    assert project.counts() == {}, "nothing may run when the parameters are wrong"
    return proc


def _wd_pipeline(project):
    """The standard pipeline whose train stage also reads train.wd when there is one."""
    pipeline(project)
    stages = project.root / "stages/data.py"
    stages.write_text(stages.read_text().replace(
        '    count("train")\n    return sum(data) * record.params.train.lr',
        '    wd = record.params.train.get("wd", 0)\n'
        '    count(f"train_wd={wd}")\n'
        '    return sum(data) * record.params.train.lr + wd'))
    assert "train_wd" in stages.read_text()
    return project


def test_sweep_typo_is_refused_with_did_you_mean(project):
    pipeline(project)
    project.write("params/typo.yaml", """
        extends: base.yaml
        sweep:
          train.lrr: [0.1, 0.2]
    """)
    _refused(project, "params/typo.yaml", needles=(
        "params/typo.yaml:3: sweep key 'train.lrr' is not a parameter (did you mean: train.lr",
        "write '+train.lrr' to sweep a new parameter"))


def test_extending_file_typo_is_refused(project):
    pipeline(project)
    project.write("params/child.yaml", """
        extends: base.yaml
        train:
          lrr: 0.3
    """)
    _refused(project, "params/child.yaml", needles=(
        "params/child.yaml:3: unknown key 'train.lrr' (did you mean: train.lr?)",
        "write '+lrr:' to add a new one"))


def test_plus_adds_a_key_that_the_stage_reads(project):
    _wd_pipeline(project)
    project.write("params/wd.yaml", """
        extends: base.yaml
        train:
          +wd: 5
    """)
    project.orch(*RUN, "params/wd.yaml")
    assert project.counts() == {"make_data": 1, "train_wd=5": 1, "evaluate": 1}
    assert project.manifest()["param_sets"]["wd"]["train"] == {"lr": 0.1, "nproc": 1, "wd": 5}
    reads = {n["stage"]: n["reads"] for n in project.manifest()["nodes"]}
    assert reads["train"] == {"train.lr": 0.1, "train.wd": 5}


def test_sweep_over_a_new_key_runs_each_value(project):
    _wd_pipeline(project)
    project.write("params/wdsweep.yaml", """
        extends: base.yaml
        sweep:
          +train.wd: [1, 2]
    """)
    project.orch(*RUN, "params/wdsweep.yaml")
    assert project.counts() == {"make_data": 1, "train_wd=1": 1, "train_wd=2": 1, "evaluate": 2}
    assert set(project.manifest()["param_sets"]) == {"wdsweep[train.wd=1]", "wdsweep[train.wd=2]"}


def test_plus_on_an_existing_key_is_refused(project):
    pipeline(project)
    project.write("params/child.yaml", """
        extends: base.yaml
        train:
          +lr: 0.3
    """)
    _refused(project, "params/child.yaml", needles=(
        "params/child.yaml:3: '+lr' adds 'train.lr', but base.yaml already has it; drop the '+'",))
    project.write("params/sweep.yaml", "extends: base.yaml\nsweep:\n  +train.lr: [1, 2]\n")
    _refused(project, "params/sweep.yaml", needles=(
        "params/sweep.yaml:3: sweep key '+train.lr'", "drop the '+' to sweep it"))


def test_set_plus_adds_a_key(project):
    _wd_pipeline(project)
    _refused(project, "params/base.yaml", "-S", "train.wd=3", needles=(
        "no parameter set has 'train.wd'", "-S +train.wd=..."))
    project.orch(*RUN, "params/base.yaml", "-S", "+train.wd=3")
    assert project.counts() == {"make_data": 1, "train_wd=3": 1, "evaluate": 1}
    project.reset_counts()
    _refused(project, "params/base.yaml", "-S", "+train.lr=3", needles=(
        "--set +train.lr: 'train.lr' already exists in params/base.yaml; drop the '+'",))


def test_reserved_word_typo_is_refused(project):
    pipeline(project)
    project.write("params/standalone.yaml", """
        data: {n: 10}
        train: {lr: 0.1}
        sweeps:
          train.lr: [0.1, 0.2]
    """)
    _refused(project, "params/standalone.yaml", needles=(
        "params/standalone.yaml:3: unknown key 'sweeps', did you mean 'sweep'?", "write '+sweeps:'"))
    project.write("params/child.yaml", "extend: base.yaml\nnmae: child\n")
    _refused(project, "params/child.yaml", needles=(
        "params/child.yaml:1: unknown key 'extend', did you mean 'extends'?",))
    project.write("params/child.yaml", "extends: base.yaml\nnmae: child\n")
    _refused(project, "params/child.yaml", needles=(
        "params/child.yaml:2: unknown key 'nmae', did you mean 'name'?", "write '+nmae:'"))


def test_correct_files_run_and_cache_as_before(project):
    pipeline(project)
    project.orch(*RUN, "params/sweep.yaml")
    assert project.counts() == {"make_data": 1, "train": 2, "evaluate": 2}  # one dataset for both lrs
    project.reset_counts()
    second = project.orch(*RUN, "params/sweep.yaml")
    assert project.counts() == {} and "6 nodes: 6 cached" in second.stdout
    # '+' is spelling only: a key added by '+' gives the values (and cache entries) of a base defining it
    project.write("params/plain.yaml", "data: {n: 10}\ntrain: {lr: 0.1, nproc: 1, extra: 7}\n")
    project.write("params/added.yaml", "extends: base.yaml\nname: plain\ntrain: {+extra: 7}\n")
    project.orch(*RUN, "params/plain.yaml")
    assert project.counts() == {}  # extra is read by no stage: base's entries hold
    out = project.orch(*RUN, "params/added.yaml")
    assert "3 nodes: 3 cached" in out.stdout and project.counts() == {}
    assert project.manifest()["param_sets"] == {"plain": {"data": {"n": 10},
                                                          "train": {"lr": 0.1, "nproc": 1, "extra": 7}}}
