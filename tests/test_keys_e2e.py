"""What invalidates a node and what does not, end to end: each part of the cache key and trace."""

from __future__ import annotations

import os

RUN = ("run", "experiment.py", "-p", "params/p.yaml")

STAGES = '''
from orchestrator import stage, PickleCacher, JsonCacher
from stages.counting import count

SCALE = 2

class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return x * self.factor

@stage(outputs=["data"], cachers=[PickleCacher]{version})
def make(record):
    count("make")
    extra = record.params.get("extra", 0)
    return [Scaler(SCALE).apply(i) + extra for i in range(record.params.n)]

@stage(inputs=["data"], outputs=["total"], cachers=[{cacher}]{ignore})
def total(record, data):
    count("total")
    record.track("table.csv")
    return {{"total": sum(data) * record.params.lr, "rows": open("table.csv").read().count("\\n")}}
'''


def _write(project, version="", cacher="PickleCacher", ignore="", scale="2", method="x * self.factor"):
    src = STAGES.format(version=version, cacher=cacher, ignore=ignore)
    src = src.replace("SCALE = 2", f"SCALE = {scale}").replace("return x * self.factor", f"return {method}")
    project.write("stages/keys.py", src)


def _project(project):
    _write(project)
    project.write("experiment.py", '''
        from stages.keys import make, total

        def run(record):
            total(make(record))
    ''')
    project.write("params/p.yaml", "n: 4\nlr: 0.5\n")
    project.write("table.csv", "a\nb\n")
    project.orch(*RUN)
    project.reset_counts()


def test_version_bump_reruns_with_its_reason(project):
    _project(project)
    _write(project, version=", version=2")
    out = project.orch(*RUN)
    assert project.counts() == {"make": 1}  # same output bytes: total stays cached
    assert "version None -> 2" in out.stdout


def test_switching_the_cacher_reruns(project):
    _project(project)
    _write(project, cacher="JsonCacher")
    out = project.orch(*RUN)
    assert project.counts() == {"total": 1}
    assert "declaration changed" in out.stdout


def test_module_constant_and_class_method_edits_rerun(project):
    _project(project)
    _write(project, scale="3")
    project.orch(*RUN)
    assert project.counts() == {"make": 1, "total": 1}
    project.reset_counts()
    _write(project, scale="3", method="self.factor * x")  # same values, different code
    project.orch(*RUN)
    assert project.counts() == {"make": 1}


def test_a_parameter_added_later_invalidates_a_get_with_default(project):
    _project(project)
    project.write("params/p.yaml", "n: 4\nlr: 0.5\nextra: 0\n")
    project.orch(*RUN)
    assert project.counts() == {"make": 1}  # absent -> 0: a different read, same output
    project.reset_counts()
    project.write("params/p.yaml", "n: 4\nlr: 0.5\nextra: 1\n")
    out = project.orch(*RUN)
    assert project.counts() == {"make": 1, "total": 1}
    assert "parameter extra changed: 0 -> 1" in out.stdout


def test_ignored_parameter_changes_nothing(project):
    _project(project)
    _write(project, ignore=', ignore=["lr"]')
    project.orch(*RUN)  # the declaration did not change the key: still cached
    assert project.counts() == {}
    project.orch(*RUN, "-S", "lr=0.9")
    assert project.counts() == {}


def test_tracked_file_content_not_its_timestamp(project):
    _project(project)
    table = project.root / "table.csv"
    st = table.stat()
    os.utime(table, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    project.orch(*RUN)
    assert project.counts() == {}
    project.write("table.csv", "a\nb\nc\n")
    out = project.orch(*RUN)
    assert project.counts() == {"total": 1}
    assert "file table.csv changed" in out.stdout
