"""The cyclic collector during a run (orchestrator.gcpolicy): off while orch plans and records, on
for stage bodies, and the process left as it was found."""

from __future__ import annotations

import gc
import json

from orchestrator import gcpolicy

# Cyclic garbage made, then allocations until the collector reclaims it on its own (no gc.collect()):
# a paused or frozen-out collector would leave the finalizer uncalled.
CYCLES = '''
import weakref


class Cycle:
    pass


def collected_on_its_own():
    freed = []
    c = Cycle()
    c.self = c
    weakref.finalize(c, freed.append, True)
    del c
    keep = []
    for i in range(200_000):
        keep.append([i])
        if freed:
            break
    return bool(freed)
'''

# A stage body that reports it.
STAGES = '''
import gc

from orchestrator import stage
from orchestrator.cachers import JsonCacher
from stages.cycles import collected_on_its_own


@stage(outputs=["seen"], cachers=[JsonCacher])
def body(record):
    return {"enabled": gc.isenabled(), "collected": collected_on_its_own()}
'''

EXPERIMENT = '''
from stages.body import body


def run(record):
    body(record)
'''


def _write(project, experiment: str) -> None:
    project.write("stages/cycles.py", CYCLES)
    project.write("stages/body.py", STAGES)
    project.write("experiment.py", experiment)


def test_stage_bodies_run_with_the_collector_on(project):
    _write(project, EXPERIMENT)
    project.orch("run", "experiment.py")
    [row] = project.manifest()["nodes"]
    assert row["status"] == "ran"
    out = project.root / ".orch" / "objects"
    seen = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert seen == [{"enabled": True, "collected": True}]


# The experiment's run() making cyclic garbage while it builds the graph: the collector is on, only
# relaxed (gcpolicy.relaxed), so it reclaims the cycle on its own within the loop's allocations.
GRAPH_EXPERIMENT = '''
import gc
import json

from stages.body import body
from stages.cycles import collected_on_its_own


def run(record):
    collected = collected_on_its_own()
    with open("graph-gc.json", "w") as f:
        json.dump({"enabled": gc.isenabled(), "collected": collected, "gen0": gc.get_threshold()[0]}, f)
    body(record)
'''


def test_the_experiments_run_builds_the_graph_with_the_collector_relaxed_not_off(project):
    _write(project, GRAPH_EXPERIMENT)
    project.orch("run", "experiment.py")
    seen = json.loads((project.root / "graph-gc.json").read_text())
    assert seen == {"enabled": True, "collected": True, "gen0": gcpolicy.RELAXED_GEN0}


def test_relaxed_restores_the_thresholds():
    before = gc.get_threshold()
    try:
        with gcpolicy.relaxed():
            assert gc.get_threshold() == (max(before[0], gcpolicy.RELAXED_GEN0), *before[1:])
            raise KeyError("inside")
    except KeyError:
        pass
    assert gc.get_threshold() == before
    try:
        with gcpolicy.relaxed():
            gc.set_threshold(5000, 20, 20)  # the experiment's own choice stands
        assert gc.get_threshold() == (5000, 20, 20)
    finally:
        gc.set_threshold(*before)
    gc.set_threshold(0)  # automatic collection off: relaxed() does not turn it on
    try:
        with gcpolicy.relaxed():
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


def test_paused_restores_the_collector_state():
    assert gc.isenabled()
    with gcpolicy.paused():
        assert not gc.isenabled()
        with gcpolicy.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause does not re-enable what the outer paused
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpolicy.paused():
            pass
        assert not gc.isenabled()  # left off, as it was found
    finally:
        gc.enable()


def test_frozen_unfreezes_what_it_and_settle_froze():
    assert gc.get_freeze_count() == 0
    with gcpolicy.frozen():
        assert gc.get_freeze_count() > 0
        made = [[i] for i in range(1000)]
        before = gc.get_freeze_count()
        gcpolicy.settle()
        assert gc.get_freeze_count() >= before + 1000
        del made
    assert gc.get_freeze_count() == 0
    gcpolicy.settle()  # outside frozen(): nothing to add to
    assert gc.get_freeze_count() == 0


def test_frozen_leaves_a_freeze_made_by_someone_else():
    gc.freeze()
    try:
        theirs = gc.get_freeze_count()
        with gcpolicy.frozen():
            made = [[i] for i in range(1000)]
            gcpolicy.settle()  # not ours to add to: it would stay frozen after the run
            assert gc.get_freeze_count() <= theirs  # (frozen objects that die leave the count)
            del made
        assert 0 < gc.get_freeze_count() <= theirs
    finally:
        gc.unfreeze()
