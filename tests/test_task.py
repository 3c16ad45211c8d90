"""One node's execution (executors.task.execute) in-process, on the in-memory store twin and on disk:
what is stored and recorded, the re-check under the node lock, failures that leave nothing behind,
damaged inputs, lazy inputs, checkpoint directories, in-memory outputs."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest
from conftest import flip_stored_byte

from orchestrator import Lazy, PickleCacher, stage
from orchestrator.cachers import LazyArtifact
from orchestrator.core import keys
from orchestrator.core.status import Status
from orchestrator.executors.task import InputValue, Task, TaskResult, execute
from orchestrator.hashing import hash_bytes, hash_value
from orchestrator.params import MISSING
from orchestrator.store import DiskStore, Entry, KeyComponents, Read, Store, StoredOutput
from orchestrator.store.locks import NodeLock

ROOT = Path(__file__).parent
PICKLE_ID = ("orchestrator.cachers:PickleCacher", {"protocol": 5})

CALLS: list[str] = []  # stage calls, in order
ORDER: list[str] = []  # lock events and stage calls, for the lock tests
SEEN: list = []  # what stages saw (lazy handles, checkpoint directories)
CHECKPOINT_FAILS = [True]


# -- stages (module level: tasks name them by module and qualname) -----------------------------------

@stage(outputs=["data"], cachers=[PickleCacher])
def produce(record):
    CALLS.append("produce")
    return [i + record.params.get("offset", 0) for i in range(record.params.n)]


@stage(inputs=["data"], outputs=["total"], cachers=[PickleCacher])
def consume(record, data):
    CALLS.append("consume")
    return sum(data) * record.params.k


@stage(outputs=["digest"], cachers=[PickleCacher])
def tracked(record):
    CALLS.append("tracked")
    path = record.params.file
    record.track(path)
    return Path(path).read_text().upper()


@stage(outputs=["x"], cachers=[PickleCacher])
def explode(record):
    CALLS.append("explode")
    with open(record.get_path("partial.txt"), "w") as f:  # staged work that must not survive
        f.write("half done")
    raise ValueError(f"exploded on purpose (n={record.params.n})")


@stage(outputs=["a", "b"], cachers=[PickleCacher, PickleCacher])
def three_for_two(record):
    CALLS.append("three_for_two")
    return 1, 2, 3


@stage(outputs=["good", "bad"], cachers=[PickleCacher, PickleCacher])
def half_savable(record):
    CALLS.append("half_savable")
    return [1, 2, 3], threading.Lock()  # a lock cannot be pickled


@stage(inputs=[Lazy("data")], outputs=["seen"], cachers=[PickleCacher])
def peek(record, data):
    SEEN.append(data)
    return data.load()


@stage(outputs=["steps"], cachers=[PickleCacher])
def resumable(record):
    d = Path(record.checkpoint_dir())
    existing = sorted(p.name for p in d.iterdir())
    SEEN.append((str(d), existing))
    (d / f"step{len(existing)}").write_text(str(record.params.n))
    if CHECKPOINT_FAILS[0]:
        raise RuntimeError("crashed at hour 5 of 6")
    return len(existing) + 1


@stage(outputs=["m", "s", Lazy("big")], cachers=[None, PickleCacher, PickleCacher])
def mixed(record):
    return {"a": record.params.n}, [1, 2], "big" * 100


@stage(outputs=["f"])
def unhashable(record):
    return lambda: 0


@stage(outputs=["v"], cachers=[PickleCacher])
def locked_stage(record):
    ORDER.append("stage")
    return record.params.n * 10


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _clean():
    CALLS.clear()
    ORDER.clear()
    SEEN.clear()
    CHECKPOINT_FAILS[0] = True
    yield


def make_task(stg, params: dict, *, inputs=(), node_id: int = 0, set_name: str = "a",
              input_hashes: dict | None = None, **kw) -> Task:
    """A task as the runner would build it, with a key derived from made-up components."""
    comp = KeyComponents(stg.id, stg.version, "code-" + stg.name, hash_value(stg.declaration()),
                         dict(input_hashes or {}))
    return Task(node_id=node_id, stage_ref=(stg.fn.__module__, stg.fn.__qualname__), label=f"{stg.name}[{set_name}]",
                set_name=set_name, params=params, key=keys.node_key(comp), components=comp, inputs=list(inputs),
                project_root=str(ROOT), **kw)


def stored_input(name: str, result: TaskResult, output: str, producer: int, lazy: bool = False) -> InputValue:
    return InputValue(name, None, lazy, producer, stored=result.outputs[output], cacher=PickleCacher())


def load(store: Store, out: StoredOutput):
    return PickleCacher().load(str(store.object_path(out.object)))


def contents(store: Store) -> tuple[list, list]:
    return list(store.iter_objects()), list(store.iter_entries())


def staging_leftovers(store: Store) -> list[str]:
    return os.listdir(store._tmp_root())


def foreign_entry(store: Store, task: Task, value, reads: dict[str, Read], tmp_path: Path) -> Entry:
    """What another process that computed this node would have stored."""
    src = tmp_path / f"foreign-{len(list(store.iter_objects()))}.pkl"
    src.write_bytes(pickle.dumps(value, protocol=5))
    info = store.ingest(src, ".pkl")
    entry = Entry(key=task.key, trace_id=keys.trace_id({p: r.hash for p, r in reads.items()}, {}),
                  stage=task.stage_ref[0] + ":" + task.stage_ref[1], param_set="elsewhere", created=time.time(),
                  components=task.components, reads=reads, files={},
                  outputs={"data": StoredOutput(info, PICKLE_ID, None)})
    store.put_entry(entry)
    return entry


def reads_of_produce(n, offset=MISSING) -> dict[str, Read]:
    return {"n": Read(keys.read_value_hash(n), n),
            "offset": Read(keys.read_value_hash(offset), "<missing>" if offset is MISSING else offset)}


def tamper(store: Store, out: StoredOutput) -> Path:
    return flip_stored_byte(store, out.object)


# -- what a run stores -----------------------------------------------------------------------------

def test_run_stores_outputs_and_writes_entry_and_head(store):
    task = make_task(produce, {"n": 3, "unused": 1})
    r = execute(task, store, produce)
    assert r.status == Status.RAN and CALLS == ["produce"]
    value = [0, 1, 2]
    data = pickle.dumps(value, protocol=5)
    reads = reads_of_produce(3)  # n read, offset read while absent; unused never read
    e = r.entry
    assert e.key == task.key and e.components == task.components
    assert e.stage == produce.id and e.param_set == "a"
    assert e.reads == reads and r.reads == reads
    assert e.trace_id == keys.trace_id({"n": keys.read_value_hash(3), "offset": keys.read_value_hash(MISSING)}, {})
    assert e.files == {}
    out = e.outputs["data"]
    assert out.object.hash == hash_bytes(data) and out.object.size == len(data)
    assert (out.object.kind, out.object.ext) == ("file", ".pkl")
    assert out.cacher == PICKLE_ID and r.outputs == e.outputs
    assert load(store, out) == value
    assert r.values == {"data": value} and r.hashes == {"data": out.object.hash}
    assert store.get_entry(task.key, e.trace_id) == e
    head = store.get_head(keys.head_key(produce.id, "a"))
    assert (head.key, head.created, head.components) == (task.key, e.created, task.components)
    assert staging_leftovers(store) == []


def test_entry_records_tracked_files_in_its_trace(store, tmp_path):
    f = tmp_path / "input.txt"
    f.write_text("hello")
    task = make_task(tracked, {"file": str(f)})
    r = execute(task, store, tracked)
    assert r.status == Status.RAN and load(store, r.outputs["digest"]) == "HELLO"
    files = {str(f.resolve()): hash_bytes(b"hello")}
    assert r.entry.files == files
    assert r.entry.trace_id == keys.trace_id({"file": keys.read_value_hash(str(f))}, files)


def test_stage_ref_is_imported_when_no_stage_is_given(store):
    r = execute(make_task(produce, {"n": 2, "offset": 5}), store)
    assert r.status == Status.RAN and r.values == {"data": [5, 6]}
    assert r.entry.reads == reads_of_produce(2, 5)


# -- the re-check under the lock -----------------------------------------------------------------------

def test_entry_stored_meanwhile_by_another_process_is_returned_without_calling_the_stage(store, tmp_path):
    task = make_task(produce, {"n": 3})
    theirs = foreign_entry(store, task, ["theirs"], reads_of_produce(3), tmp_path)
    r = execute(task, store, produce)
    assert r.status == Status.CACHED and CALLS == []
    assert r.entry == theirs and r.outputs == theirs.outputs and r.reads == theirs.reads
    assert r.values == {} and load(store, r.outputs["data"]) == ["theirs"]


@pytest.mark.parametrize("stale", ["read-changed", "object-missing"])
def test_entry_that_no_longer_holds_is_not_accepted_by_the_recheck(store, tmp_path, stale):
    task = make_task(produce, {"n": 3})
    theirs = foreign_entry(store, task, ["theirs"], reads_of_produce(4 if stale == "read-changed" else 3), tmp_path)
    if stale == "object-missing":
        store.delete_object(theirs.outputs["data"].object)
    r = execute(task, store, produce)
    assert r.status == Status.RAN and CALLS == ["produce"]
    assert load(store, r.outputs["data"]) == [0, 1, 2]


def test_force_bypasses_the_recheck_and_replaces_the_entry(store, tmp_path):
    task = make_task(produce, {"n": 3}, force=True)
    theirs = foreign_entry(store, task, ["theirs"], reads_of_produce(3), tmp_path)
    r = execute(task, store, produce)
    assert r.status == Status.RAN and CALLS == ["produce"]
    assert r.entry.trace_id == theirs.trace_id  # same computation: same entry name, now ours
    assert load(store, store.get_entry(task.key, theirs.trace_id).outputs["data"]) == [0, 1, 2]


class _SpyLock(NodeLock):
    def __init__(self, inner: NodeLock, reached: threading.Event):
        self.inner, self.reached = inner, reached

    def acquire(self, timeout: float = -1) -> bool:
        ORDER.append("acquiring")
        self.reached.set()
        ok = self.inner.acquire(timeout)
        ORDER.append("acquired")
        return ok

    def release(self) -> None:
        ORDER.append("released")
        self.inner.release()


def _blocked_execute(store: Store, monkeypatch, task: Task):
    """Start execute(task) in a thread while this thread holds the task's lock scope; return once
    the thread is inside acquire() (the lock it waits on is the one held here)."""
    holder = store.lock(task.lock_scope)
    assert holder.acquire(timeout=10)
    real_lock, reached, names, results = store.lock, threading.Event(), [], []

    def spy_lock(name: str) -> NodeLock:
        names.append(name)
        return _SpyLock(real_lock(name), reached)

    monkeypatch.setattr(store, "lock", spy_lock)
    thread = threading.Thread(target=lambda: results.append(execute(task, store, locked_stage)), daemon=True)
    thread.start()
    assert reached.wait(timeout=10), "execute never tried to take the node lock"
    assert ORDER == ["acquiring"]  # not past the lock: the stage has not run
    assert names == [task.lock_scope]  # the lock scope, not the bare key
    return holder, thread, results


def test_execute_waits_for_the_node_lock_held_by_another_thread(store, monkeypatch):
    task = make_task(locked_stage, {"n": 4})
    task.lock_scope = task.key + ".scope"
    holder, thread, results = _blocked_execute(store, monkeypatch, task)
    ORDER.append("holder releases")
    holder.release()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert ORDER == ["acquiring", "holder releases", "acquired", "stage", "released"]
    assert results[0].status == Status.RAN and results[0].values == {"v": 40}


def test_recheck_happens_inside_the_lock(store, monkeypatch, tmp_path):
    """The holder of the lock (another process) stores the node and releases it: the waiting
    execute finds that entry and never calls the stage."""
    task = make_task(locked_stage, {"n": 4})
    task.lock_scope = task.key + ".scope"
    holder, thread, results = _blocked_execute(store, monkeypatch, task)
    src = tmp_path / "v.pkl"
    src.write_bytes(pickle.dumps(40, protocol=5))
    reads = {"n": Read(keys.read_value_hash(4), 4)}
    theirs = Entry(task.key, keys.trace_id({"n": reads["n"].hash}, {}), locked_stage.id, "a", time.time(),
                   task.components, reads, {}, {"v": StoredOutput(store.ingest(src, ".pkl"), PICKLE_ID)})
    store.put_entry(theirs)
    holder.release()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert ORDER == ["acquiring", "acquired", "released"]  # the stage never ran
    assert results[0].status == Status.CACHED and results[0].entry == theirs


# -- failures leave nothing behind ---------------------------------------------------------------------

def _nothing_stored(store: Store, task: Task, stg) -> None:
    assert contents(store) == ([], [])
    assert store.get_head(keys.head_key(stg.id, task.set_name)) is None
    assert staging_leftovers(store) == []


def test_stage_that_raises_fails_with_its_error_and_stores_nothing(store):
    task = make_task(explode, {"n": 3})
    r = execute(task, store, explode)
    assert r.status == Status.FAILED and CALLS == ["explode"]
    assert (r.error, r.error_type) == ("exploded on purpose (n=3)", "ValueError")
    assert "ValueError: exploded on purpose (n=3)" in r.traceback and "in explode" in r.traceback
    assert "executors/task.py" not in r.traceback  # the user's frames only
    assert r.entry is None and r.outputs == {} and r.values == {}
    _nothing_stored(store, task, explode)


def test_wrong_number_of_outputs_fails_with_stage_output_error(store):
    task = make_task(three_for_two, {})
    r = execute(task, store, three_for_two)
    assert r.status == Status.FAILED and r.error_type == "StageOutputError"
    assert "declares 2 outputs ['a', 'b'] but returned a tuple of length 3" in r.error
    _nothing_stored(store, task, three_for_two)


def test_output_that_cannot_be_saved_fails_and_leaves_no_partial_outputs(store):
    task = make_task(half_savable, {})
    r = execute(task, store, half_savable)
    assert r.status == Status.FAILED and r.error_type == "StageOutputError"
    assert "output 'bad' (lock) cannot be saved by PickleCacher" in r.error
    _nothing_stored(store, task, half_savable)  # 'good' was prepared, never ingested


def test_failure_is_appended_to_the_node_log_which_its_result_names(store, tmp_path):
    log = tmp_path / "run" / "logs" / "0-explode.log"
    log.parent.mkdir(parents=True)
    log.write_text("$ python train.py\nepoch 1\n")  # what run_external wrote there before the failure
    r = execute(make_task(explode, {"n": 3}, log_path=str(log)), store, explode)
    text = log.read_text()
    assert text.startswith("$ python train.py\nepoch 1\n--- explode[a] failed ---\nTraceback (most recent call last):\n")
    assert "in explode" in text and text.endswith("ValueError: exploded on purpose (n=3)\n")
    assert r.traceback == text[text.index("Traceback"):] and r.log_path == str(log)
    no_log = execute(make_task(explode, {"n": 3}), store, explode)  # no log (unit use): nothing named
    assert no_log.log_path is None and no_log.traceback.startswith("Traceback")


def test_a_chained_error_shows_only_the_users_frames(store):
    r = execute(make_task(half_savable, {}), store, half_savable)  # StageOutputError from pickle's error
    assert "The above exception was the direct cause" in r.traceback and "TypeError" in r.traceback
    assert f"orchestrator{os.sep}" not in r.traceback, r.traceback  # neither the cause's frames nor its own

# -- inputs ----------------------------------------------------------------------------------------

def test_damaged_stored_input_is_reported_with_its_producer_and_quarantined(store):
    produced = execute(make_task(produce, {"n": 3}), store, produce)
    out = produced.outputs["data"]
    path = tamper(store, out)
    task = make_task(consume, {"k": 2}, inputs=[stored_input("data", produced, "data", producer=7)], node_id=8,
                     input_hashes={"data": out.object.hash})
    r = execute(task, store, consume)
    assert r.status == Status.DAMAGED and r.damaged_producer == 7 and r.node_id == 8
    assert out.object.hash in r.error and "damaged" in r.error
    assert CALLS == ["produce"]  # consume never called
    assert not store.has_object(out.object) and not path.exists()
    assert store.get_entries(task.key) == []
    if isinstance(store, DiskStore):
        assert [p.name.split(".")[0] for p in (store.root / "quarantine").iterdir()] == [out.object.hash]


def test_lazy_input_arrives_as_a_handle_that_loads_the_value(store):
    produced = execute(make_task(produce, {"n": 3}), store, produce)
    task = make_task(peek, {}, inputs=[stored_input("data", produced, "data", producer=0, lazy=True)], node_id=1)
    r = execute(task, store, peek)
    assert r.status == Status.RAN and r.values == {"seen": [0, 1, 2]}
    handle = SEEN[0]
    assert isinstance(handle, LazyArtifact) and handle.name == "data"
    assert handle.path == str(store.object_path(produced.outputs["data"].object))
    assert handle.load() == [0, 1, 2]


def test_in_memory_input_is_passed_as_is(store):
    raw = [5, 6]
    task = make_task(consume, {"k": 3}, inputs=[InputValue("data", None, False, 0, value=raw, in_memory=True)])
    r = execute(task, store, consume)
    assert r.status == Status.RAN and r.values == {"total": 33}


# -- checkpoint directories ----------------------------------------------------------------------------

def test_checkpoint_dir_survives_failure_and_is_removed_after_success(store):
    task = make_task(resumable, {"n": 1})
    first = execute(task, store, resumable)
    assert first.status == Status.FAILED
    ckpt, before = SEEN[0]
    assert before == [] and sorted(os.listdir(ckpt)) == ["step0"]  # kept for the next attempt

    other = execute(make_task(resumable, {"n": 2}), store, resumable)  # another node: its own directory
    other_dir, other_before = SEEN[1]
    assert other.status == Status.FAILED and other_before == [] and other_dir != ckpt

    CHECKPOINT_FAILS[0] = False
    again = execute(make_task(resumable, {"n": 1}), store, resumable)  # the same node again
    assert again.status == Status.RAN and again.values == {"steps": 2}
    assert SEEN[2] == (ckpt, ["step0"])  # resumed from what the failed run left
    assert not os.path.exists(ckpt) and not os.path.exists(os.path.dirname(ckpt))
    assert os.listdir(other_dir) == ["step0"]  # the other node's checkpoints are untouched


# -- in-memory outputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_memory", [True, False])
@pytest.mark.parametrize("return_cached", [True, False])
def test_in_memory_outputs_hashes_and_returned_values(store, hash_memory, return_cached):
    task = make_task(mixed, {"n": 7}, hash_memory_outputs=hash_memory, return_cached_values=return_cached)
    r = execute(task, store, mixed)
    assert r.status == Status.RAN
    assert r.entry is None and list(store.iter_entries()) == []  # an output without cacher: never an entry
    assert set(r.outputs) == {"s", "big"} and load(store, r.outputs["big"]) == "big" * 100
    stored = {"s": r.outputs["s"].object.hash, "big": r.outputs["big"].object.hash}
    mem = {"m": "mem:" + hash_bytes(pickle.dumps({"a": 7}, protocol=5))} if hash_memory else {}
    assert r.hashes == {**stored, **mem}
    # lazy outputs never travel back; stored ones only when asked; in-memory ones always
    assert r.values == ({"m": {"a": 7}, "s": [1, 2]} if return_cached else {"m": {"a": 7}})


def test_in_memory_output_that_cannot_be_pickled_has_no_hash(store):
    r = execute(make_task(unhashable, {}, hash_memory_outputs=True), store, unhashable)
    assert r.status == Status.RAN and r.hashes == {"f": None} and callable(r.values["f"])


# -- the re-check reads only entries that can hold ------------------------------------------------

@stage(outputs=["data"], cachers=[PickleCacher], ignore=["verbose"])
def chatty(record):
    CALLS.append("chatty")
    return [record.params.n]


def _counting_reads(store: Store, monkeypatch) -> list[str]:
    read: list[str] = []
    real = store.get_entry

    def get_entry(key, trace_id, **kw):
        read.append(trace_id)
        return real(key, trace_id, **kw)

    monkeypatch.setattr(store, "get_entry", get_entry)
    return read


def test_recheck_reads_only_the_entries_of_a_known_signature_that_can_hold(store, tmp_path, monkeypatch):
    """Sweep points share a key: once a signature's reads are known, the re-check opens only the one
    entry of it whose name the current values give, and still finds it when another process stored it."""
    task = make_task(produce, {"n": 3})
    others = [foreign_entry(store, task, [n], reads_of_produce(n), tmp_path) for n in (4, 5)]
    read = _counting_reads(store, monkeypatch)
    r = execute(task, store, produce)  # learns the signature from the first entry it reads
    assert r.status == Status.RAN and CALLS == ["produce"]
    assert len(read) == 1 and read[0] in {e.trace_id for e in others}
    read.clear()
    CALLS.clear()
    theirs = foreign_entry(store, make_task(produce, {"n": 6}), ["theirs"], reads_of_produce(6), tmp_path)
    r = execute(make_task(produce, {"n": 6}), store, produce)
    assert r.status == Status.CACHED and r.entry == theirs and CALLS == []
    assert read == [theirs.trace_id]  # not the entries of n=3, 4, 5


def test_recheck_reads_every_entry_whose_signature_has_an_ignored_read(store, tmp_path, monkeypatch):
    """An entry that recorded a read its stage now ignores holds whatever that value is (check_trace
    skips it), though its name says otherwise: it must still be found."""

    def reads(n, verbose):
        return {"n": Read(keys.read_value_hash(n), n), "verbose": Read(keys.read_value_hash(verbose), verbose)}

    foreign_entry(store, make_task(chatty, {"n": 4}), [4], reads(4, True), tmp_path)
    r = execute(make_task(chatty, {"n": 2, "verbose": False}), store, chatty)  # learns the signature
    assert r.status == Status.RAN and CALLS == ["chatty"]
    CALLS.clear()
    theirs = foreign_entry(store, make_task(chatty, {"n": 3}), ["theirs"], reads(3, True), tmp_path)
    r = execute(make_task(chatty, {"n": 3, "verbose": False}), store, chatty)
    assert r.status == Status.CACHED and r.entry == theirs and CALLS == []


ASKS_FOR_CHECKPOINTS = [True]


@stage(outputs=["steps"], cachers=[PickleCacher])
def sometimes_resumable(record):
    if ASKS_FOR_CHECKPOINTS[0]:
        (Path(record.checkpoint_dir()) / "step0").write_text("0")
        raise RuntimeError("killed")
    return 1


def test_checkpoints_a_failed_attempt_left_are_removed_by_a_success_that_never_asked_for_them(store):
    """The checkpoint directory's name is only derived when one may exist (the directory they all
    live in does): a leftover is removed whether or not the successful attempt used it."""
    task = make_task(sometimes_resumable, {"n": 1})
    assert execute(task, store, sometimes_resumable).status == Status.FAILED
    scratch = Path(store._checkpoint_root())
    assert [p.name for p in scratch.iterdir()] != []
    ASKS_FOR_CHECKPOINTS[0] = False
    try:
        assert execute(make_task(sometimes_resumable, {"n": 1}), store, sometimes_resumable).status == Status.RAN
    finally:
        ASKS_FOR_CHECKPOINTS[0] = True
    assert list(scratch.iterdir()) == []
