"""The entry index (store.entryindex) may only skip reading an entry file that would give the same
entry: a changed, replaced, deleted or corrupted entry, and a truncated, corrupt or foreign index,
must all be noticed (the entry is read from its file, or is absent)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import pipeline

from orchestrator.store import DiskStore, Entry, KeyComponents, ObjectInfo, Read, StoredOutput, entryindex

H = ["%064x" % i for i in range(1, 9)]
KEYS = ["ab" + "c" * 62, "cd" + "e" * 62]
SETTLE = 0.3  # RACY_S in these tests: entries older than this at a planning's start are indexed


@pytest.fixture(autouse=True)
def short_racy(monkeypatch):
    monkeypatch.setattr(entryindex, "RACY_S", SETTLE)


def make_entry(key: str, trace: str, out: str, **extra) -> Entry:
    fields = dict(key=key, trace_id=trace, stage="m:s", param_set="p", created=1.5,
                  components=KeyComponents("m:s", None, H[0], H[1], {"x": H[2]}),
                  reads={"lr": Read(H[3], 0.1), "model": Read(H[4], {"width": 8, "act": ["relu", None]})},
                  files={"data/a.csv": H[5]},
                  outputs={"y": StoredOutput(ObjectInfo(out, 5, "file", ".pkl"), ("orchestrator.cachers:PickleCacher",
                                                                                   {"protocol": 5}), [1, {"a": 2.5}])})
    fields.update(extra)
    return Entry(**fields)


def planning(root: Path, name: str = "exp") -> DiskStore:
    """A store as session.plan_experiment opens it, with the index of experiment `name`."""
    store = DiskStore(root, write=False)
    store.use_entry_index(name)
    return store


def reads_of(store: DiskStore, monkeypatch) -> list[str]:
    """The entry files `store` opens from now on."""
    opened = []
    real = store._read

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, "_read", counting)
    return opened


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache with three entries, old enough to be indexed, and an index learned from them."""
    root = tmp_path / "cache"
    writer = DiskStore(root)
    for key, trace, out in ((KEYS[0], "s-t1", H[6]), (KEYS[0], "s-t2", H[7]), (KEYS[1], "s-t1", H[6])):
        writer.put_entry(make_entry(key, trace, out))
    time.sleep(SETTLE + 0.1)
    store = planning(root)
    assert store.get_entry(KEYS[0], "s-t1") and len(store.get_entries(KEYS[0])) == 2 and store.get_entry(KEYS[1], "s-t1")
    store.save_entry_index()
    assert len(list((root / "index").glob("*.idx"))) == 1
    return root


def test_pack_round_trips_every_field():
    e = make_entry(KEYS[0], "s-t1", H[6], accepted={"by": "me", "from": KEYS[1]}, duration_s=2.25,
                   metrics={"loss": {"last": 0.5, "n": 3, "min": None}}, series=ObjectInfo(H[7], 10, "file", ".jsonl"),
                   components=KeyComponents("m:agg", 3, H[0], H[1], {"x@a": H[2]}, ("a", "b")))
    back = entryindex.unpack(entryindex.pack(e))
    assert back == e and type(back) is Entry and type(back.components) is KeyComponents
    assert type(back.outputs["y"].object) is ObjectInfo and type(back.series) is ObjectInfo
    assert back.outputs["y"].metadata == [1, {"a": 2.5}] and back.reads["model"] == Read(H[4], {"width": 8, "act": ["relu", None]})


def test_an_indexed_entry_is_served_without_opening_its_file(cache, monkeypatch):
    store = planning(cache)
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1") == make_entry(KEYS[0], "s-t1", H[6])
    assert {e.trace_id for e in store.get_entries(KEYS[0])} == {"s-t1", "s-t2"}
    assert opened == []
    store.save_entry_index()  # nothing learned: nothing written


def test_an_entry_rewritten_in_place_with_the_same_size_is_read_again(cache, monkeypatch):
    path = cache / "entries" / KEYS[0][:2] / KEYS[0] / "s-t1.json"
    data = path.read_bytes()
    assert data.count(H[6].encode()) == 1
    ino = os.stat(path).st_ino
    with open(path, "r+b") as f:  # same inode, same size, new output hash
        f.write(data.replace(H[6].encode(), H[5].encode()))
    assert os.stat(path).st_ino == ino and os.stat(path).st_size == len(data)
    store = planning(cache)
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1").outputs["y"].object.hash == H[5]
    assert opened == [str(path)]


def test_an_entry_replaced_by_rename_or_deleted_is_noticed(cache):
    DiskStore(cache).put_entry(make_entry(KEYS[0], "s-t1", H[5]))  # same size: only the hash differs
    DiskStore(cache).delete_entry(KEYS[1], "s-t1")
    store = planning(cache)
    assert store.get_entry(KEYS[0], "s-t1").outputs["y"].object.hash == H[5]
    assert store.get_entry(KEYS[1], "s-t1") is None
    assert [e.trace_id for e in store.get_entries(KEYS[1])] == []


def test_an_entry_learned_too_soon_after_it_was_written_is_not_indexed(tmp_path, monkeypatch):
    monkeypatch.setattr(entryindex, "RACY_S", 3600.0)  # "too soon" however long the disk stalls
    root = tmp_path / "cache"
    DiskStore(root).put_entry(make_entry(KEYS[0], "s-t1", H[6]))
    store = planning(root)  # at once: the file is younger than RACY_S
    assert store.get_entry(KEYS[0], "s-t1")
    store.save_entry_index()
    assert not (root / "index").exists() or not list((root / "index").glob("*.idx"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped byte", "old format", "garbage"])
def test_a_damaged_index_is_ignored(cache, monkeypatch, damage):
    [index] = (cache / "index").glob("*.idx")
    data = index.read_bytes()
    data = {"truncated": data[: len(data) // 2], "empty": b"", "old format": b"orch-entry-index 0\n" + data[19:],
            "flipped byte": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "garbage": os.urandom(len(data))}[damage]
    index.write_bytes(data)
    store = planning(cache)
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1") == make_entry(KEYS[0], "s-t1", H[6])
    assert len(opened) == 1


def test_an_index_copied_from_another_cache_is_ignored(cache, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(cache, other)  # entries and index, mtimes preserved
    DiskStore(other).put_entry(make_entry(KEYS[0], "s-t1", H[5]))
    for idx in (cache / "index").glob("*.idx"):
        shutil.copy2(idx, other / "index" / idx.name)
    store = planning(other)
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1").outputs["y"].object.hash == H[5]
    assert store.get_entry(KEYS[1], "s-t1") == make_entry(KEYS[1], "s-t1", H[6])
    assert len(opened) == 2  # nothing served from the copied index


def test_a_record_filed_under_another_entry_is_not_used(cache, monkeypatch):
    """An intact index whose record for one entry holds another entry's content (never written by
    orch, but the name check costs nothing) is not trusted for it."""
    index = entryindex.EntryIndex(str(next((cache / "index").glob("*.idx"))), str(cache / "entries"), writable=True)
    a, b = f"{KEYS[0]}/s-t1", f"{KEYS[0]}/s-t2"
    index._used = {a: (index._old[a][0], index._old[b][1]), b: index._old[b]}
    index._learned = 1
    index.save()
    store = planning(cache)
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1").trace_id == "s-t1"
    assert len(opened) == 1


def test_a_read_only_cache_reads_the_index_and_writes_none(cache, monkeypatch):
    for idx in (cache / "index").glob("*.idx"):
        idx.unlink()
    store = DiskStore(cache, write=False)
    store.read_only = True
    store.use_entry_index("exp")
    assert store.get_entry(KEYS[0], "s-t1")
    store.save_entry_index()
    assert list((cache / "index").glob("*.idx")) == []


def test_the_index_serves_cached_runs_and_an_edit_still_reruns(project):
    """End to end, every entry indexed at once (ORCH_INDEX_RACY_S=0, as tests/test_fuzz.py runs it):
    the third run is served from the index, then edits re-run exactly what they change."""
    pipeline(project)
    env = {"ORCH_INDEX_RACY_S": "0"}
    run = ("run", "experiment.py", "--params", "params/sweep.yaml")
    project.orch(*run, env=env)
    project.orch(*run, env=env)  # reads every entry, writes the index
    [index] = (project.root / ".orch" / "index").glob("*.idx")
    before = index.stat().st_mtime_ns
    project.reset_counts()
    project.orch(*run, env=env)
    assert project.counts() == {} and index.stat().st_mtime_ns == before  # nothing new learned: not rewritten
    assert set(project.statuses().values()) == {"cached"}
    project.write("stages/util.py", """
        def scale(x):
            return x * 3
    """)
    project.orch(*run, env=env)
    assert project.counts() == {"make_data": 1, "train": 2, "evaluate": 2}  # make_data: one computation for both sets
    project.reset_counts()
    project.orch(*run, env=env)
    assert project.counts() == {}


def test_a_written_record_is_the_entry_a_reader_would_parse_or_none(tmp_path):
    """What put_entry_and_head returns for the entry index is the very entry that parsing its JSON
    file back gives; an entry JSON would change (a tuple, an int where the reader makes a float, a
    non-str key, a NaN) or that the reader refuses gets None (the next planning reads the file)."""
    root = tmp_path / "cache"
    store = DiskStore(root)
    good = make_entry(KEYS[0], "s-t1", H[6], created=1796000000.123456, duration_s=0.25,
                      metrics={"loss": {"last": 0.5, "n": 3, "min": None}}, accepted={"by": "me"})
    sig = store.put_entry_and_head(good, "h" * 64)
    path = root / "entries" / KEYS[0][:2] / KEYS[0] / "s-t1.json"
    assert sig == entryindex.signature(os.stat(path))  # taken after the head's link
    record = entryindex.written_record(good, sig)
    assert entryindex.unpack(record[1]) == Entry.from_json(json.loads(path.read_bytes())) == good
    out = good.outputs["y"]
    for bad in (good._replace(created=1796000000), good._replace(duration_s=float("nan")),
                good._replace(outputs={"y": out._replace(metadata=(1, 2))}),
                good._replace(outputs={"y": out._replace(cacher=(out.cacher[0], {"shape": (3, 4)}))}),
                good._replace(outputs={"y": out._replace(object=out.object._replace(size=5.0))}),
                good._replace(outputs={"y": out._replace(object=out.object._replace(size=True))}),
                good._replace(series=ObjectInfo("not a hash", 1, "file", ".jsonl")),
                good._replace(reads={"lr": Read(H[3], {1: "int key"})}),
                good._replace(metrics={"loss": {"last": float("inf")}}),
                good._replace(metrics={"loss": {"last": True}}), good._replace(metrics={"loss": {"last": "0.5"}}),
                good._replace(components=good.components._replace(code=3)),
                good._replace(components=good.components._replace(sets=["a"]))):
        assert entryindex.written_record(bad, sig) is None, bad


def test_a_written_record_never_differs_from_its_file_for_random_entries(tmp_path):
    """written_record re-states what the reader accepts and JSON keeps; random entries, with values
    of every kind a stage, a cacher or a parameter may hand over, hold it to that: whenever a record
    is made, it unpacks to exactly the entry parsed back from its file, types included."""
    import random

    rng = random.Random(11)
    plain = [0, 1, -7, 2**70, True, False, None, 0.5, 1.0, -0.0, "x", "é", "a/b c"]
    odd = [float("nan"), float("inf"), "\udce9", "\ud83d\ude00", (1, 2), ("x",), {1: "int key"}, {None: 0},
           [1, (2,)], {"k": {"\ud83d\ude00": 1}}]

    def value(odd_one: bool, depth: int = 0):
        r = rng.random()
        if odd_one and r < 0.5:
            return rng.choice(odd)
        if depth > 2 or r < 0.6:
            return rng.choice(plain)
        if r < 0.8:
            return [value(odd_one, depth + 1) for _ in range(rng.randrange(3))]
        return {rng.choice(["k", "é", "n"]): value(odd_one, depth + 1) for _ in range(rng.randrange(3))}

    def text(odd_one: bool):
        return rng.choice(["\udce9", "\ud83d\ude00", "\ud83d"]) if odd_one and rng.random() < 0.7 else rng.choice(["a", "é"])

    store, made = DiskStore(tmp_path / "cache"), 0
    for i in range(400):
        odd_field = rng.randrange(10)  # one field in about 1.7 gets an odd value, the others plain ones
        o = [odd_field == f for f in range(10)]
        e = make_entry(KEYS[i % 2], f"s-t{i}", H[6], created=2 if o[0] else 1796000000.25,
                       duration_s=3 if o[1] else 0.25, param_set=text(o[2]), files={text(o[3]): H[5]},
                       reads={text(o[4]): Read(H[3], value(o[5]))},
                       metrics=rng.choice([None, {"m": {"last": value(o[6])}}, {"m": {"last": 0.5, "n": 2}}]),
                       accepted=rng.choice([None, {"by": text(o[7])}]))
        out = e.outputs["y"]
        e = e._replace(outputs={"y": out._replace(cacher=(out.cacher[0], value(o[8])), metadata=value(o[9]))})
        try:
            sig = store.put_entry_and_head(e, "h" * 64)
        except (ValueError, TypeError):  # not writable as JSON at all (a key JSON refuses...)
            continue
        record = entryindex.written_record(e, sig)
        path = tmp_path / "cache" / "entries" / e.key[:2] / e.key / f"{e.trace_id}.json"
        if record is not None:
            made += 1
            parsed = Entry.from_json(json.loads(path.read_bytes()))
            assert repr(entryindex.unpack(record[1])) == repr(parsed)  # repr: 1 != 1.0, () != []
    assert 40 < made < 360  # both kinds were drawn


def test_an_entry_replaced_by_another_writer_before_its_head_is_linked_gets_no_record(tmp_path, monkeypatch):
    """Two writers of the same key and trace: the record must not pair this writer's entry with the
    other writer's file (whose content the next planning would then be told it has)."""
    root = tmp_path / "cache"
    mine, theirs = make_entry(KEYS[0], "s-t1", H[6], created=1.25), make_entry(KEYS[0], "s-t1", H[7], created=1.75)
    store = DiskStore(root)
    real_link = DiskStore._link_head

    def others_write_first(self, entry, head_name):
        if entry is mine:
            DiskStore(root).put_entry_and_head(theirs, "g" * 64)  # renamed over ours meanwhile
        real_link(self, entry, head_name)

    monkeypatch.setattr(DiskStore, "_link_head", others_write_first)
    assert store.put_entry_and_head(mine, "h" * 64) is None
    monkeypatch.undo()
    assert DiskStore(root).put_entry_and_head(mine, "h" * 64) is not None  # alone: recorded


def test_a_run_indexes_the_entries_it_wrote(project, monkeypatch, request):
    """At its end a run puts the entries it wrote into the index, with their read signatures as
    hints: the planning right after it (RACY_S not waited for) opens no entry file and lists no key
    directory, and serves exactly the entries the files hold. Pool workers' entries too."""
    pipeline(project)
    project.orch("run", "experiment.py", "--params", "params/sweep.yaml", "-j", "2")
    here = InProcess(project, monkeypatch, request, racy=3600.0)  # nothing read now is learned: only written records serve
    decisions = here.plan().decisions
    assert {d.state for d in decisions} == {"cached"} and len(decisions) == 6
    assert here.entries_read() == [] and here.entry_dirs_listed() == []
    assert all(d.entry == here.file_of(d) for d in decisions)


def test_a_failed_run_indexes_what_it_wrote_and_an_overwrite_replaces_the_records(project, monkeypatch, request):
    """A run that fails at one node still indexes the entries it wrote; a run with --overwrite
    writes every entry anew (new files) and its records replace the old ones: the planning after
    each serves exactly what the files hold, reading none of them."""
    pipeline(project)
    project.write("stages/data.py", (project.root / "stages" / "data.py").read_text().replace(
        'count("evaluate")', 'count("evaluate")\n    assert model < 10, "too good"'))
    run = ("run", "experiment.py", "--params", "params/sweep.yaml")
    assert project.orch(*run, check=False).returncode != 0  # evaluate fails in the lr=0.2 set
    here = InProcess(project, monkeypatch, request, racy=3600.0)
    decisions = here.plan().decisions
    assert sorted(str(d.state) for d in decisions) == ["cached"] * 5 + ["run"]
    assert here.entries_read() == []
    before = {d.key: d.entry for d in decisions if d.entry is not None}
    project.write("stages/data.py", (project.root / "stages" / "data.py").read_text().replace(
        '\n    assert model < 10, "too good"', ""))
    project.orch(*run, "--overwrite")
    decisions = here.plan().decisions
    assert {str(d.state) for d in decisions} == {"cached"} and here.entries_read() == []
    for d in decisions:
        assert d.entry == here.file_of(d)
        if d.key in before:
            assert d.entry.created > before[d.key].created  # the new computation, not the old record


def test_an_entry_a_run_wrote_then_changed_in_place_is_read_again(project, monkeypatch):
    pipeline(project)
    project.orch("run", "experiment.py", "--params", "params/base.yaml")
    [path] = [p for p in (project.root / ".orch" / "entries").rglob("*.json") if b'"stages.data:train"' in p.read_bytes()]
    data, before = path.read_bytes(), os.stat(path)
    old_hash = json.loads(data)["outputs"]["model"]["object"]["hash"]
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:  # a later tick of the filesystem's clock
        time.sleep(0.01)
        with open(path, "r+b") as f:  # same inode, same size, another output hash
            f.write(data.replace(old_hash.encode(), H[5].encode()))
    key = path.parent.name
    store = planning(project.root / ".orch", hashlib.sha256(str((project.root / "experiment.py").resolve()).encode()).hexdigest()[:32])
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(key, path.stem).outputs["model"].object.hash == H[5]
    assert opened == [str(path)]


def test_planning_hints_round_trip_with_the_index(cache):
    hints = {"m:s": {"sig1": (("lr", "model"), ("data/a.csv",))}, "m:t": {"sig2": ((), ())}}
    store = planning(cache)
    assert store.planning_hints() == {}  # the fixture's index was saved without hints
    store.save_entry_index(hints)  # nothing learned but the hints: written all the same
    assert planning(cache).planning_hints() == hints
    [index] = (cache / "index").glob("*.idx")
    before = index.stat().st_mtime_ns
    time.sleep(0.01)
    store = planning(cache)
    store.save_entry_index(store.planning_hints())  # the same hints, nothing learned: not rewritten
    assert index.stat().st_mtime_ns == before


def test_malformed_hints_are_dropped_and_the_records_kept(cache, monkeypatch):
    import marshal
    import zlib

    [index] = (cache / "index").glob("*.idx")
    head = len(entryindex.MAGIC) + 4
    root, records, _ = marshal.loads(index.read_bytes()[head:])
    bad = {"m:s": {"sig": (("lr",), ())}, "m:t": {"sig": ("lr", ())}, "m:u": ["not", "a", "dict"], 3: {}}
    payload = marshal.dumps((root, records, bad))
    index.write_bytes(entryindex.MAGIC + zlib.crc32(payload).to_bytes(4, "big") + payload)
    store = planning(cache)
    assert store.planning_hints() == {"m:s": {"sig": (("lr",), ())}}
    opened = reads_of(store, monkeypatch)
    assert store.get_entry(KEYS[0], "s-t1") == make_entry(KEYS[0], "s-t1", H[6])
    assert opened == []  # the records still serve


def test_a_settled_cached_run_lists_no_entry_directory(project, monkeypatch, request):
    """With the hints, the first node of each stage stats its predicted entry instead of listing its
    key's directory; an edit that misses still lists it (and re-runs what it changes)."""
    pipeline(project)
    env = {"ORCH_INDEX_RACY_S": "0"}
    run = ("run", "experiment.py", "--params", "params/sweep.yaml")
    project.orch(*run, env=env)
    project.orch(*run, env=env)  # reads every entry, writes the index and the hints
    here = InProcess(project, monkeypatch, request, racy=0.0)
    index_name = hashlib.sha256(str(here.experiment).encode()).hexdigest()[:32]
    store = planning(project.root / ".orch", index_name)
    hints = store.planning_hints()
    assert set(hints) == {"stages.data:make_data", "stages.data:train", "stages.data:evaluate"}
    stale = {stage: {**sigs, "0" * 16: (("gone.param",), ())} for stage, sigs in hints.items()}
    store.save_entry_index(stale)  # signatures of entries deleted since: tried, never found
    assert {d.state for d in here.plan().decisions} == {"cached"}
    assert here.entry_dirs_listed() == []
    assert planning(project.root / ".orch", index_name).planning_hints() == hints  # the stale ones dropped
    decisions = here.plan(overrides=("data.n=11",)).decisions
    assert [str(d.state) for d in decisions].count("run") == 2  # make_data, in each set
    assert here.entry_dirs_listed()  # the miss looked at every entry of the key


class InProcess:
    """Plannings of the test project in this process (its `stages` isolated: isolate_stages_package),
    with RACY_S set to `racy`, counting the entry files read and the directories listed."""

    def __init__(self, project, monkeypatch, request, racy: float):
        monkeypatch.setattr(entryindex, "RACY_S", racy)
        monkeypatch.chdir(project.root)
        monkeypatch.syspath_prepend(str(project.root))
        isolate_stages_package(request)
        self.root, self.opened, self.listed = project.root, [], []
        real_read, real_listdir = DiskStore._read, os.listdir
        monkeypatch.setattr(DiskStore, "_read", lambda store, path, *a, **k: self.opened.append(path)
                            or real_read(store, path, *a, **k))
        monkeypatch.setattr(os, "listdir", lambda d=".": self.listed.append(str(d)) or real_listdir(d))
        self.experiment = (project.root / "experiment.py").resolve()

    def plan(self, params: str = "params/sweep.yaml", overrides: tuple = ()):
        from orchestrator.session import RunOptions, plan_experiment

        self.opened.clear()
        self.listed.clear()
        opts = RunOptions(self.experiment, params=[params], overrides=list(overrides))
        return plan_experiment(opts, self.experiment, self.root / ".orch")

    def entries_read(self) -> list[str]:
        """Entry files opened that exist (a node that runs probes its predicted entry: not a read)."""
        return [p for p in self.opened if "/entries/" in p and os.path.exists(p)]

    def entry_dirs_listed(self) -> list[str]:
        return [d for d in self.listed if "/entries/" in d]

    def file_of(self, decision) -> Entry:
        """What the file of a decision's entry holds, parsed."""
        path = self.root / ".orch" / "entries" / decision.key[:2] / decision.key / f"{decision.entry.trace_id}.json"
        return Entry.from_json(json.loads(path.read_bytes()))


def isolate_stages_package(request) -> None:
    """The test project's `stages` package imported in this process, then gone again: neither the
    repository's own `stages` (the bundled example, which other tests import) nor another test's
    may stand in for it, and it must not stand in for theirs afterwards."""
    import sys

    def ours(name: str) -> bool:  # (and its experiment module)
        return name in ("stages", "experiment") or name.startswith("stages.")

    saved = {m: mod for m, mod in sys.modules.items() if ours(m)}
    for m in saved:
        del sys.modules[m]

    def restore() -> None:
        for m in [m for m in sys.modules if ours(m)]:
            del sys.modules[m]
        sys.modules.update(saved)

    request.addfinalizer(restore)
