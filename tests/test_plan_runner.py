"""Planning and the run loop in-process, on the in-memory store twin and on disk."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator import PickleCacher, stage
from orchestrator.core.graph import Graph
from orchestrator.core.plan import PlanContext, forced_nodes, plan
from orchestrator.core.status import Status
from orchestrator.executors.base import InProcessExecutor
from orchestrator.hashing import Fingerprinter
from orchestrator.params import ParamSet

CACHED, PENDING, RUN = Status.CACHED, Status.PENDING, Status.RUN
from orchestrator.core.runner import Runner
from orchestrator.store import DiskStore

CALLS: list[str] = []


@stage(outputs=["data"], cachers=[PickleCacher])
def make(record):
    CALLS.append("make")
    return list(range(record.params.n))


@stage(inputs=["data"], outputs=["total"], cachers=[PickleCacher])
def total(record, data):
    CALLS.append("total")
    return sum(data) * record.params.k


@stage(inputs=["total"], outputs=["report"], cachers=[PickleCacher])
def report(record, total):
    CALLS.append("report")
    return f"total={total}"


@stage(inputs=["x"], outputs=["x"], cachers=[PickleCacher])
def step(record, x):
    return x + 1


@stage(outputs=["x"], cachers=[PickleCacher])
def start(record):
    return 0


def _graph(sets: dict[str, dict], wire) -> Graph:
    g = Graph([ParamSet(name, values, "<test>") for name, values in sets.items()])
    for name in sets:
        wire(g.new_record(g.param_sets[name]))
    return g


def _pipeline(record):
    report(total(make(record)))


def _ctx(store, graph, **kw) -> PlanContext:
    root = Path(__file__).parent
    orch = Path(sys.modules["orchestrator"].__file__).parent
    return PlanContext(store=store, fingerprinter=Fingerprinter(root, exclude=[orch]), project_root=root,
                       forced=forced_nodes(graph, kw.pop("overwrite_stages", [])), **kw)


def _run(store, graph, **kw):
    ctx = _ctx(store, graph, **kw)
    decisions = plan(graph, ctx)
    runner = Runner(graph, ctx, decisions, InProcessExecutor(store))
    return decisions, runner.run_all(), runner


def test_fresh_plan_runs_roots_and_pends_the_rest(store):
    g = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    decisions = plan(g, _ctx(store, g))
    assert [d.state for d in decisions] == [RUN, PENDING, PENDING]
    assert decisions[1].reason == "waits on make"
    assert decisions[0].reason == "never ran"


def test_run_then_everything_cached_and_values_correct(store):
    CALLS.clear()
    g = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    _, outcomes, runner = _run(store, g)
    assert [o.status for o in outcomes] == ["ran", "ran", "ran"]
    assert CALLS == ["make", "total", "report"]
    assert runner._st.values == {}  # every in-memory artifact freed after its last consumer
    CALLS.clear()
    g2 = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    decisions = plan(g2, _ctx(store, g2))
    assert [d.state for d in decisions] == [CACHED] * 3
    entry = decisions[2].entry
    path = store.object_path(entry.outputs["report"].object)
    assert PickleCacher().load(str(path)) == "total=6"
    assert CALLS == []


def test_parameter_change_explains_itself_and_keeps_upstream(store):
    g = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    _run(store, g)
    g2 = _graph({"a": {"n": 3, "k": 5}}, _pipeline)
    decisions = plan(g2, _ctx(store, g2))
    assert [d.state for d in decisions] == [CACHED, RUN, PENDING]
    assert decisions[1].reason == "parameter k changed: 2 -> 5"


def test_overwrite_stage_reruns_downstream_then_everything_is_cached(store):
    """(Early cutoff at run time: tests/test_runner.py, test_rerun_with_identical_bytes_...)"""
    g = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    _run(store, g)
    g2 = _graph({"a": {"n": 3, "k": 2, "unused": 1}}, _pipeline)
    _, outcomes, _ = _run(store, g2, overwrite_stages=["make"])
    assert [o.status for o in outcomes] == ["ran", "ran", "ran"]
    g3 = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    _, outcomes, _ = _run(store, g3)
    assert [o.status for o in outcomes] == ["cached"] * 3


def test_overwrite_stage_forces_downstream_only(store):
    g = _graph({"a": {"n": 3, "k": 2}}, _pipeline)
    assert forced_nodes(g, ["total"]) == {1, 2}
    assert forced_nodes(g, []) == set()


def test_ten_thousand_node_chain_plans_and_runs_without_recursion(store):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # any recursion over the graph would blow up
    try:
        def wire(record):
            start(record)
            for _ in range(9_999):
                step(record)

        g = _graph({"a": {}}, wire)
        assert len(g.nodes) == 10_000
        ctx = _ctx(store, g)
        decisions = plan(g, ctx)
        assert decisions[0].state == RUN and decisions[-1].state == PENDING
        assert len(g.downstream({0})) == 10_000
    finally:
        sys.setrecursionlimit(limit)


def test_failure_skips_dependents_and_keeps_others(store, monkeypatch):
    g = _graph({"a": {"n": 3, "k": 2}, "b": {"n": 3, "k": None}}, _pipeline)
    _, outcomes, _ = _run(store, g)
    by = {(o.node.stage.name, o.node.set_name): o for o in outcomes}
    assert by[("total", "b")].status == "failed" and by[("total", "b")].error_type == "TypeError"
    assert by[("report", "b")].status == "skipped" and by[("report", "b")].skipped_because == "total[b]"
    assert by[("report", "a")].status == "ran"
    assert by[("make", "b")].status == "cached"  # shared with set a: same code, inputs and reads


@stage(outputs=["raw"])
def load_raw(record):
    return list(range(5))


@stage(inputs=["raw"], outputs=["data"], cachers=[PickleCacher])
def clean(record, raw):
    return [x * 10 for x in raw]


def _mem_pipeline(record):
    total(clean(load_raw(record)))


def test_damaged_input_whose_producer_cannot_be_recomputed_fails_clearly(tmp_path):
    """clean's input lived in memory only and was released once clean was found cached: when total
    finds clean's stored output damaged, clean cannot be recomputed in this run. The node must fail
    with a clear message, never run on a missing (None) input."""
    store = DiskStore(tmp_path / "cache")
    g = _graph({"a": {"k": 1}}, _mem_pipeline)
    _, first, _ = _run(store, g)
    entry = first[1].entry

    info = entry.outputs["data"].object
    path = store.object_path(info, verify=False)
    path.chmod(0o644)
    data = path.read_bytes()
    path.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])  # same size: found only at load
    g2 = _graph({"a": {"k": 2}}, _mem_pipeline)  # total must run and load clean's output
    _, outcomes, _ = _run(store, g2)
    by = {o.node.stage.name: o for o in outcomes}
    assert by["clean"].status == "cached"
    assert by["total"].status == "failed" and "cannot be recomputed in this run" in by["total"].error


def test_planning_checks_an_object_many_entries_share_once_and_a_missing_one_every_time(store, monkeypatch):
    """Within one planning, an object found present is not looked at again (the sets of a sweep
    often share one); a missing one is looked for by every entry that needs it, and after the
    planning nothing is remembered (a stage body may damage an object)."""
    sets = {f"s{i}": {"n": 3, "k": i} for i in range(4)}  # `make` computes the same list in every set
    g = _graph(sets, _pipeline)
    _run(store, g)
    checked: list[list[str]] = []
    real = type(store).missing_outputs

    def counting(self, entry):
        checked.append([o.object.hash for o in entry.outputs.values()])
        return real(self, entry)

    monkeypatch.setattr(type(store), "missing_outputs", counting)
    ctx = _ctx(store, g)
    assert all(d.state == CACHED for d in plan(g, ctx))
    made = [c for c in checked if c == checked[0]]
    assert len(made) == 1 and len(checked) == len({h for c in checked for h in c})  # each object once
    assert ctx.present_objects is None

    data = next(d.entry for d in plan(g, _ctx(store, g)) if d.entry.stage.endswith(":make"))
    store.delete_object(data.outputs["data"].object)
    checked.clear()
    decisions = plan(g, _ctx(store, g))
    assert [d.state for n, d in zip(g.nodes, decisions) if n.stage.name == "make"] == [RUN] * 4
    assert sum(c == [data.outputs["data"].object.hash] for c in checked) >= 4


@stage(outputs=["data"], cachers=[PickleCacher])
def seeded(record):
    return [record.params.n]


@stage(outputs=["data"], cachers=[PickleCacher], ignore=["verbose"])
def quiet_seeded(record):
    return [record.params.n]


def _counting_entry_reads(store, monkeypatch) -> list[str]:
    read: list[str] = []
    real = type(store).get_entry

    def get_entry(self, key, trace_id, **kw):
        read.append(trace_id)
        return real(self, key, trace_id, **kw)

    monkeypatch.setattr(type(store), "get_entry", get_entry)
    return read


def test_sweep_points_sharing_a_key_read_only_the_entries_that_can_hold(store, monkeypatch):
    """The points of a sweep over a parameter a root stage reads share its key. Once the stage's read
    signature is known, a look-up opens only the entry whose name the current values give: a first
    run of n points re-decides each point reading one name, not every point stored before it (n^2)."""
    sets = {f"p{i}": {"n": i} for i in range(12)}
    g = _graph(sets, seeded)
    read = _counting_entry_reads(store, monkeypatch)
    decisions, outcomes, _ = _run(store, g)
    assert [o.status for o in outcomes] == [Status.RAN] * 12
    assert len(read) <= 2 * len(sets), read  # was 0 + 1 + ... + 11 = 66 entry reads
    read.clear()
    decisions = plan(g, _ctx(store, g))  # and a cached planning still finds every point
    assert [d.state for d in decisions] == [CACHED] * 12
    assert [d.entry.param_set for d in decisions] == list(sets)


def test_an_entry_whose_recorded_read_is_now_ignored_is_still_found(store, tmp_path):
    """An entry that recorded a read its stage ignores now holds whatever that value is (check_trace
    skips the read), though its name says otherwise: once its signature is known, it must still be
    read, not skipped as "another value"."""
    import pickle
    import time

    from orchestrator.core import keys
    from orchestrator.store import Entry, Read, StoredOutput

    g = _graph({"a": {"n": 1, "verbose": True}}, quiet_seeded)
    ctx = _ctx(store, g)
    [d] = plan(g, ctx)
    assert d.state == RUN
    reads = {"n": Read(keys.read_value_hash(1), 1), "verbose": Read(keys.read_value_hash(False), False)}
    src = tmp_path / "old.pkl"
    src.write_bytes(pickle.dumps([1], protocol=5))
    old = Entry(key=d.key, trace_id=keys.trace_id({p: r.hash for p, r in reads.items()}, {}), stage=quiet_seeded.id,
                param_set="a", created=time.time(), components=d.components, reads=reads, files={},
                outputs={"data": StoredOutput(store.ingest(src, ".pkl"), quiet_seeded.outputs[0].cacher.identity(), None)})
    store.put_entry(old)
    for _ in range(2):  # the second planning knows the signature (n, verbose) from the first
        ctx = _ctx(store, g)
        ctx.signatures.update({quiet_seeded.id: {keys.signature_of(old.trace_id): (("n", "verbose"), ())}})
        [d] = plan(g, ctx)
        assert d.state == CACHED and d.entry.trace_id == old.trace_id


def test_a_hint_whose_reads_do_not_make_its_signature_does_not_hide_an_entry(store):
    """Planner hints come from the entry index: a hint mapping a signature to other reads (damage, a
    bug) predicts a name no entry has; the entries of that signature must then be read, not skipped."""
    g = _graph({"a": {"n": 1}}, seeded)
    _run(store, g)
    ctx = _ctx(store, g)
    [d] = plan(g, ctx)
    sig = d.entry.trace_id.split("-", 1)[0]
    ctx = _ctx(store, g)
    ctx.signatures.update({seeded.id: {sig: (("bogus",), ())}})
    [again] = plan(g, ctx)
    assert again.state == CACHED and again.entry.trace_id == d.entry.trace_id
