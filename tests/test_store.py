"""One suite for every Store implementation (DiskStore and its in-memory twin), plus disk-only tests
for what only a filesystem has: permissions, corrupt files, other processes, atomic writes."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from orchestrator import hashing
from orchestrator.errors import DamagedObjectError, StoreError
from orchestrator.fsutil import atomic_write_bytes, atomic_write_json, make_readonly, rmtree_force
from orchestrator.store import (
    CodeManifest,
    DiskStore,
    Entry,
    EntryError,
    Head,
    KeyComponents,
    ObjectInfo,
    Read,
    Store,
    StoredOutput,
)
from orchestrator.store.bytelocks import PROBE_OFFSET, node_offset

KEY = "ab" + "c" * 62


@pytest.fixture
def disk(tmp_path) -> DiskStore:
    return DiskStore(tmp_path / "cache")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path) -> Path:
    write(root / "a.txt", b"alpha")
    write(root / "sub" / "b.bin", b"\x00" * 1000)
    (root / "empty").mkdir()
    run = write(root / "run.sh", b"#!/bin/sh\n")
    run.chmod(0o755)
    return root


def tamper(store: Store, info: ObjectInfo, data: bytes) -> Path:
    """Overwrite a stored file the way bit rot or a stray tool would (ignoring read-only)."""
    path = store.object_path(info, verify=False)
    target = path if info.kind == "file" else path / "a.txt"
    target.chmod(0o644)
    target.write_bytes(data)
    os.utime(target, ns=(1, 1))  # a distinct mtime even on coarse-timestamp filesystems
    return target


COMPONENTS = KeyComponents("m:s", None, "c" * 64, "d" * 64, {"data": "e" * 64})


def entry(trace_id: str, created: float, key: str = KEY, outputs: dict | None = None, **extra) -> Entry:
    """An entry as a stage writes it; `outputs` maps names to stored hashes (objects need not exist)."""
    stored = {name: StoredOutput(ObjectInfo(h, 1, "file", ".pkl"), ("orchestrator.cachers:PickleCacher", {"protocol": 5}))
              for name, h in (outputs or {}).items()}
    fields = dict(key=key, trace_id=trace_id, stage="m:s", param_set="default", created=created,
                  components=COMPONENTS, reads={"train.lr": Read("f" * 64, 0.1)}, files={}, outputs=stored)
    fields.update(extra)
    return Entry(**fields)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# -- objects --------------------------------------------------------------------------------------


def test_ingest_file(store, tmp_path):
    src = write(tmp_path / "stage" / "out.pkl", b"hello")
    info = store.ingest(src, ".pkl")
    assert info == ObjectInfo(hashlib.sha256(b"hello").hexdigest(), 5, "file", ".pkl")
    assert not src.exists()
    path = store.object_path(info)
    assert path.read_bytes() == b"hello"
    assert path.name.endswith(".pkl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has_object(info)


def test_ingest_dir(store, tmp_path):
    src = make_tree(tmp_path / "stage" / "model")
    expected = hashing.hash_path(src)
    info = store.ingest(src)
    assert (info.kind, info.hash, info.size) == expected
    assert info.size == 5 + 1000 + 10
    assert not src.exists()
    path = store.object_path(info)
    assert (path / "a.txt").read_bytes() == b"alpha"
    assert (path / "sub" / "b.bin").read_bytes() == b"\x00" * 1000
    assert (path / "empty").is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o555
    assert stat.S_IMODE((path / "sub").stat().st_mode) == 0o555
    assert stat.S_IMODE((path / "a.txt").stat().st_mode) == 0o444
    assert stat.S_IMODE((path / "run.sh").stat().st_mode) == 0o555  # executables stay runnable
    assert hashing.hash_path(path) == expected


def test_identical_content_stored_once(store, tmp_path):
    a = store.ingest(write(tmp_path / "a", b"same"), ".bin")
    b = store.ingest(write(tmp_path / "b", b"same"), ".bin")
    assert a == b
    assert [o.hash for o in store.iter_objects()] == [a.hash]
    assert not (tmp_path / "b").exists()
    d1 = store.ingest(make_tree(tmp_path / "t1"))
    d2 = store.ingest(make_tree(tmp_path / "t2"))
    assert d1 == d2 and not (tmp_path / "t2").exists()
    assert sorted(o.hash for o in store.iter_objects()) == sorted([a.hash, d1.hash])


def test_tree_with_symlink(store, tmp_path):
    src = make_tree(tmp_path / "d")
    (src / "link").symlink_to("a.txt")
    expected = hashing.hash_path(src)
    info = store.ingest(src)
    assert (info.kind, info.hash, info.size) == expected
    path = store.object_path(info)
    assert os.readlink(path / "link") == "a.txt"
    assert list(store.iter_objects()) == [info]


def test_same_content_other_ext_is_another_object(store, tmp_path):
    a = store.ingest(write(tmp_path / "a", b"x"), ".pkl")
    b = store.ingest(write(tmp_path / "b", b"x"), ".json")
    assert a.hash == b.hash and store.object_path(a) != store.object_path(b)
    assert store.object_path(b).read_bytes() == b"x"


def test_iter_objects_reports_kind_size_ext(store, tmp_path):
    f = store.ingest(write(tmp_path / "f", b"12345"), ".pkl")
    d = store.ingest(make_tree(tmp_path / "d"))
    assert sorted(store.iter_objects(), key=lambda o: o.kind) == sorted([d, f], key=lambda o: o.kind)


def test_has_object(store, tmp_path):
    info = store.ingest(write(tmp_path / "f", b"12345"))
    assert store.has_object(info)
    assert not store.has_object(ObjectInfo(info.hash, 6, "file"))
    assert not store.has_object(ObjectInfo(info.hash, 5, "file", ".other"))
    assert not store.has_object(ObjectInfo("0" * 64, 5, "file"))


def test_verify_quarantines_tampered_file(store, tmp_path):
    info = store.ingest(write(tmp_path / "f", b"good data"), ".pkl")
    assert store.object_path(info).read_bytes() == b"good data"  # verified once
    tamper(store, info, b"evil data")  # same size: only re-hashing can tell
    with pytest.raises(DamagedObjectError, match=info.hash):
        store.object_path(info)
    assert not store.has_object(info)
    again = store.ingest(write(tmp_path / "g", b"good data"), ".pkl")
    assert again == info and store.has_object(info)
    assert store.object_path(info).read_bytes() == b"good data"


def test_verify_quarantines_tampered_dir(store, tmp_path):
    info = store.ingest(make_tree(tmp_path / "d"))
    store.object_path(info)
    tamper(store, info, b"ALPHA")
    with pytest.raises(DamagedObjectError, match=info.hash):
        store.object_path(info)
    assert not store.has_object(info)
    assert store.ingest(make_tree(tmp_path / "d2")) == info
    assert (store.object_path(info) / "a.txt").read_bytes() == b"alpha"


def test_missing_object_is_damaged(store):
    info = ObjectInfo(hashlib.sha256(b"never").hexdigest(), 5, "file")
    with pytest.raises(DamagedObjectError, match=info.hash):
        store.object_path(info)


def test_delete_object(store, tmp_path):
    info = store.ingest(make_tree(tmp_path / "d"))
    store.delete_object(info)
    store.delete_object(info)  # absent is fine
    assert not store.has_object(info)
    assert list(store.iter_objects()) == []


def test_invalid_names_are_refused(store, tmp_path):
    with pytest.raises(ValueError):
        store.put_entry(entry("t", 1.0, key="../x"))
    with pytest.raises(ValueError):
        store.put_entry(entry("../t", 1.0))
    with pytest.raises(ValueError):
        store.object_path(ObjectInfo("../" + "0" * 61, 1, "file"))
    with pytest.raises(ValueError):
        store.ingest(write(tmp_path / "f", b"x"), "/../x")


def test_object_info_json_roundtrip():
    info = ObjectInfo("a" * 64, 3, "dir", ".d")
    assert ObjectInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert ObjectInfo.from_json({"hash": "a" * 64, "size": 3, "kind": "file"}).ext == ""


# -- entries --------------------------------------------------------------------------------------


H1, H2 = "1" * 64, "2" * 64


def test_entries_put_get_overwrite_delete(store):
    assert store.get_entries(KEY) == []
    store.put_entry(entry("t1", 1.0, outputs={"x": H1}))
    store.put_entry(entry("t2", 3.0))
    store.put_entry(entry("t3", 2.0))
    assert [e.trace_id for e in store.get_entries(KEY)] == ["t2", "t3", "t1"]
    assert store.get_entries(KEY)[-1].output_hashes() == {"x": H1}
    store.put_entry(entry("t1", 4.0, outputs={"x": H2}))
    got = store.get_entries(KEY)
    assert [e.trace_id for e in got] == ["t1", "t2", "t3"] and got[0].output_hashes() == {"x": H2}
    store.delete_entry(KEY, "t2")
    store.delete_entry(KEY, "t2")
    store.delete_entry("ff" + "0" * 62, "nope")
    assert [e.trace_id for e in store.get_entries(KEY)] == ["t1", "t3"]


def test_entries_round_trip_every_field(store):
    e = entry("sig-t1", 1.5, outputs={"x": H1, "y": H2}, files={"data/a.csv": H2}, duration_s=2.25,
              reads={"train.lr": Read("f" * 64, 0.1), "model": Read("0" * 64, {"width": 8, "act": ["relu"]}),
                     "gone": Read("9" * 64, "<missing>")},
              components=KeyComponents("m:agg", 3, "c" * 64, "d" * 64, {"x@a": H1, "x@b": H2}, ("a", "b")))
    store.put_entry(e)
    assert store.get_entry(KEY, "sig-t1") == e
    assert store.get_entries(KEY) == [e]


def test_get_entry_by_trace_id(store):
    assert store.get_entry(KEY, "sig-t1") is None
    store.put_entry(entry("sig-t1", 1.0, outputs={"x": H1}))
    assert store.get_entry(KEY, "sig-t1").output_hashes() == {"x": H1}
    assert store.get_entry(KEY, "sig-t2") is None
    assert store.get_entry("ff" + "0" * 62, "sig-t1") is None
    store.delete_entry(KEY, "sig-t1")
    assert store.get_entry(KEY, "sig-t1") is None


def test_unserializable_entry_raises_and_stores_nothing(store):
    with pytest.raises(TypeError):
        store.put_entry(entry("t", 1.0, reads={"x": Read("f" * 64, object())}))
    assert store.get_entries(KEY) == []


def test_iter_entries(store):
    k2 = "cd" + "1" * 62
    store.put_entry(entry("a", 1.0))
    store.put_entry(entry("b", 1.0, key=k2))
    store.put_entry(entry("c", 2.0, key=k2))
    assert [e.trace_id for e in store.get_entries(k2)] == ["c", "b"]
    assert sorted((e.key, e.trace_id) for e in store.iter_entries()) == [(KEY, "a"), (k2, "b"), (k2, "c")]


def _good_json() -> dict:
    return entry("t", 1.0, outputs={"x": H1}).to_json()


def _without(d: dict, *path):
    d = json.loads(json.dumps(d))
    node = d
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return d


def _with(d: dict, value, *path):
    d = json.loads(json.dumps(d))
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return d


#: Valid JSON that is not a valid entry, one case per field (and the ways a file breaks).
MALFORMED = {
    "empty file": b"",
    "truncated": json.dumps(_good_json()).encode()[:-20],
    "not an object": b"[1, 2]",
    "not utf-8": b"\xff\xfe\x00",
    "no outputs": _without(_good_json(), "outputs"),
    "outputs not a mapping": _with(_good_json(), [], "outputs"),
    "output without object": _without(_good_json(), "outputs", "x", "object"),
    "object hash not hex": _with(_good_json(), "../../etc/passwd", "outputs", "x", "object", "hash"),
    "object size negative": _with(_good_json(), -1, "outputs", "x", "object", "size"),
    "object size a string": _with(_good_json(), "12", "outputs", "x", "object", "size"),
    "object kind unknown": _with(_good_json(), "socket", "outputs", "x", "object", "kind"),
    "cacher not a pair": _with(_good_json(), "pickle", "outputs", "x", "cacher"),
    "no reads": _without(_good_json(), "reads"),
    "read without hash": _without(_good_json(), "reads", "train.lr", "h"),
    "files not strings": _with(_good_json(), {"a.csv": 3}, "files"),
    "no components": _without(_good_json(), "components"),
    "code not a string": _with(_good_json(), None, "components", "code"),
    "inputs not a mapping": _with(_good_json(), ["x"], "components", "inputs"),
    "created a string": _with(_good_json(), "yesterday", "created"),
    "created infinite": _with(_good_json(), float("inf"), "created"),
    "created beyond a float": _with(_good_json(), 10**400, "created"),
    "duration not a number": _with(_good_json(), float("nan"), "duration_s"),
    "no trace id": _without(_good_json(), "trace_id"),
    "another key": _with(_good_json(), "ee" + "e" * 62, "key"),
    "another trace id": _with(_good_json(), "other", "trace_id"),
    "future format": _with(_good_json(), 2, "format"),
    "metrics not numbers": _with(_good_json(), {"loss": {"last": "low"}}, "metrics"),
    "metrics past a float": _with(_good_json(), {"loss": {"last": 10**400}}, "metrics"),
    "metrics not a mapping": _with(_good_json(), [0.1], "metrics"),
    "series hash not hex": _with(_good_json(), {"hash": "../x", "size": 1, "kind": "file", "ext": ".jsonl"}, "series"),
}


def _plant(store, name: str, data) -> None:
    """Put a record in the store the way a crash, a bad copy or another orch version would."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    if isinstance(store, DiskStore):
        d = store.root / "entries" / KEY[:2] / KEY
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_bytes(raw)
    else:
        store._entries.setdefault(KEY, {})[name] = raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_entry_is_a_miss_with_one_warning_naming_the_stage(store, case, caplog):
    store.put_entry(entry("good", 1.0))
    _plant(store, "t", MALFORMED[case])
    with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
        assert store.get_entry(KEY, "t", label="train[default]") is None
        assert [e.trace_id for e in store.get_entries(KEY, label="train[default]")] == ["good"]
        assert [e.trace_id for e in store.iter_entries()] == ["good"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "train[default]" in warnings[0] and "treated as a cache miss" in warnings[0]


def test_an_entry_written_by_orch_0_1_without_a_format_field_is_read(store):
    _plant(store, "t", _without(_good_json(), "format"))
    assert store.get_entry(KEY, "t") == entry("t", 1.0, outputs={"x": H1})


def test_a_malformed_entry_without_a_label_names_the_stage_it_claims(disk, caplog):
    _plant(disk, "t", _without(_good_json(), "outputs"))
    with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
        assert disk.get_entries(KEY) == []
    assert "stage m:s" in caplog.records[0].getMessage()


def test_corrupt_entry_files_are_skipped_and_writes_in_progress_ignored(disk, caplog):
    disk.put_entry(entry("good", 1.0))
    d = disk.root / "entries" / KEY[:2] / KEY
    (d / "torn.json").write_bytes(b'{"trace_id": "torn", "crea')
    (d / ".good.json.123.abc.tmp").write_text("{}")  # a write in progress is not an entry
    with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
        got = disk.get_entries(KEY)
    assert [e.trace_id for e in got] == ["good"]
    assert "torn.json" in " ".join(r.getMessage() for r in caplog.records)


def test_entry_files_layout(disk):
    disk.put_entry(entry("t1", 1.0))
    path = disk.root / "entries" / KEY[:2] / KEY / "t1.json"
    assert json.loads(path.read_text()) == entry("t1", 1.0).to_json()
    assert json.loads(path.read_text())["format"] == 1
    assert temp_files(disk.root) == []


# -- locks ----------------------------------------------------------------------------------------


def test_lock_excludes_threads(store):
    inside, overlaps = [], []

    def work():
        with store.lock(KEY):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.01)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_lock_timeout_and_release(store):
    first = store.lock(KEY)
    assert first.acquire(timeout=1)
    got = []
    t = threading.Thread(target=lambda: got.append(store.lock(KEY).acquire(timeout=0.1)))
    t.start()
    t.join()
    assert got == [False]
    assert store.lock("cd" + "0" * 62).acquire(timeout=0)  # other keys are independent
    first.release()
    second = store.lock(KEY)
    assert second.acquire(timeout=0)
    second.release()


def _hold_lock(root: str, key: str, kind: str, held, release) -> None:
    store = DiskStore(Path(root))
    store._lock_kind = kind
    with store.lock(key):
        held.set()
        release.wait(30)


#: (holder's kind, taker's kind): each kind against itself, and the two byte kinds against each other
#: (processes of a new and an old kernel on one cache)
KIND_PAIRS = [("ofd", "ofd"), ("posix", "posix"), ("flock", "flock"), ("ofd", "posix"), ("posix", "ofd")]


@pytest.mark.parametrize("holder,taker", KIND_PAIRS, ids=[f"{a}-{b}" for a, b in KIND_PAIRS])
def test_lock_excludes_processes(disk, holder, taker):
    disk._lock_kind = taker
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(disk.root), KEY, holder, held, release))
    proc.start()
    try:
        assert held.wait(30)
        lock = disk.lock(KEY)
        assert lock.acquire(timeout=0.1) is False  # held by the other process: gives up
        # a waiter with a timeout gets the lock once the holder lets go during its wait
        waiting, got = threading.Event(), []

        def wait_for_lock():
            waiting.set()
            got.append(lock.acquire(timeout=30))

        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        assert waiting.wait(30)
        release.set()
        waiter.join(60)
        assert got == [True]
        lock.release()
    finally:
        release.set()
        proc.join(30)
    assert proc.exitcode == 0


def _child_lives(done) -> None:
    done.wait(30)


@pytest.mark.parametrize("kind", ["ofd", "posix", "flock"])
def test_a_child_forked_under_a_lock_does_not_keep_it(disk, kind):
    """A stage that forks (a multiprocessing pool it leaves running) while its node is locked: once the
    node's lock is released, another process can take it though the child still lives."""
    disk._lock_kind = kind
    lock = disk.lock(KEY)
    assert lock.acquire(timeout=1)
    ctx = multiprocessing.get_context("fork")
    done = ctx.Event()
    child = ctx.Process(target=_child_lives, args=(done,))
    child.start()
    try:
        lock.release()
        spawn = multiprocessing.get_context("spawn")
        held, release = spawn.Event(), spawn.Event()
        other = spawn.Process(target=_hold_lock, args=(str(disk.root), KEY, kind, held, release))
        other.start()
        try:
            assert held.wait(30), "the lock stayed held by the forked child"
            assert child.is_alive()
        finally:
            release.set()
            other.join(30)
    finally:
        done.set()
        child.join(30)


# -- staging --------------------------------------------------------------------------------------


def test_staging_dirs_unique_and_on_store_fs(store, tmp_path):
    dirs = {store.new_staging_dir("node-") for _ in range(20)}
    assert len(dirs) == 20
    for d in dirs:
        assert d.is_dir() and list(d.iterdir()) == [] and d.name.startswith("node-")
    d = next(iter(dirs))
    info = store.ingest(write(d / "out.bin", b"payload"))
    assert store.object_path(info).stat().st_dev == d.stat().st_dev
    if store.root is not None:
        assert d.stat().st_dev == store.root.stat().st_dev and store.root in d.parents


def test_ingest_from_another_filesystem(disk, tmp_path, monkeypatch):
    """A rename across filesystems fails with EXDEV: the store copies, then renames."""
    real_replace, real_rename = os.replace, os.rename
    src_dir = str(tmp_path / "elsewhere")

    def cross_device(real):
        def fake(a, b, *args, **kwargs):
            if str(a).startswith(src_dir):
                raise OSError(18, "Invalid cross-device link")  # EXDEV
            return real(a, b, *args, **kwargs)
        return fake

    monkeypatch.setattr(os, "replace", cross_device(real_replace))
    monkeypatch.setattr(os, "rename", cross_device(real_rename))
    f = disk.ingest(write(tmp_path / "elsewhere" / "f.pkl", b"far"), ".pkl")
    d = disk.ingest(make_tree(tmp_path / "elsewhere" / "tree"))
    monkeypatch.undo()
    assert disk.object_path(f).read_bytes() == b"far"
    assert (disk.object_path(d) / "a.txt").read_bytes() == b"alpha"
    assert not (tmp_path / "elsewhere" / "f.pkl").exists() and not (tmp_path / "elsewhere" / "tree").exists()
    assert list((disk.root / "tmp").iterdir()) == []


def test_ingest_symlink_stores_target_content(disk, tmp_path):
    real = write(tmp_path / "real.bin", b"target bytes")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    info = disk.ingest(link)
    assert not link.is_symlink() and real.read_bytes() == b"target bytes"
    path = disk.object_path(info)
    assert not path.is_symlink() and path.read_bytes() == b"target bytes"


def test_ingest_replaces_damaged_copy(disk, tmp_path):
    info = disk.ingest(write(tmp_path / "a", b"0123456789"))
    tamper(disk, info, b"short")  # has_object sees the wrong size: the producer re-runs
    assert not disk.has_object(info)
    assert disk.ingest(write(tmp_path / "b", b"0123456789")) == info
    assert disk.object_path(info).read_bytes() == b"0123456789"
    assert len(list((disk.root / "quarantine").iterdir())) == 1


def test_ingest_dir_race_lost_discards_ours(disk, tmp_path, monkeypatch):
    """Another process stored the same tree between our existence check and our rename."""
    info = disk.ingest(make_tree(tmp_path / "first"))
    monkeypatch.setattr("orchestrator.store.disk._lstat_or_none", lambda path: None)
    assert disk.ingest(make_tree(tmp_path / "second")) == info
    assert not (tmp_path / "second").exists()
    assert hashing.hash_path(disk.object_path(info)) == (info.kind, info.hash, info.size)


def _ingest_many(root: str, base: str, n: int) -> None:
    store = DiskStore(Path(root))
    for i in range(n):
        store.ingest(make_tree(Path(base) / str(i)))
        store.ingest(write(Path(base) / f"f{i}", b"same file"), ".bin")


def test_concurrent_ingest_from_processes(disk, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ingest_many, args=(str(disk.root), str(tmp_path / f"p{j}"), 15))
             for j in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    objects = list(disk.iter_objects())
    assert sorted(o.kind for o in objects) == ["dir", "file"]
    for o in objects:
        disk.object_path(o)  # verifies
    assert [p for j in range(3) for p in (tmp_path / f"p{j}").rglob("*")] == []  # sources consumed


def test_verify_hashes_once_per_unchanged_file(disk, tmp_path, monkeypatch):
    info = disk.ingest(write(tmp_path / "a", b"data"))
    calls = []
    real = hashing.hash_path
    monkeypatch.setattr(hashing, "hash_path", lambda p, *a: calls.append(p) or real(p, *a))
    for _ in range(3):
        disk.object_path(info)
    assert calls == []  # hashed at ingest, unchanged since: once per process, not per store
    DiskStore(disk.root).object_path(info)
    assert calls == []
    path = disk.object_path(info, verify=False)
    os.utime(path, ns=(1, 1))  # any change of (size, mtime_ns, inode) means hashing again
    disk.object_path(info)
    disk.object_path(info)
    assert len(calls) == 1


# -- DiskStore specifics --------------------------------------------------------------------------


def test_disk_store_on_a_file_is_an_error(tmp_path):
    f = write(tmp_path / "cache", b"")
    with pytest.raises(StoreError, match="not a directory"):
        DiskStore(f)
    with pytest.raises(StoreError, match="not a directory"):
        DiskStore(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_disk_store_not_writable_is_an_error(tmp_path):
    d = tmp_path / "ro"
    d.mkdir(mode=0o555)
    with pytest.raises(StoreError, match="not writable"):
        DiskStore(d)


def test_disk_store_creates_nothing_until_written(tmp_path):
    s = DiskStore(tmp_path / "cache")
    assert s.get_entries(KEY) == [] and list(s.iter_objects()) == [] and list(s.iter_entries()) == []
    assert not s.has_object(ObjectInfo("0" * 64, 1, "file"))
    assert not (tmp_path / "cache").exists()


def test_disk_layout(disk, tmp_path):
    info = disk.ingest(write(tmp_path / "f", b"x"), ".pkl")
    assert disk.object_path(info, verify=False) == disk.root / "objects" / info.hash[:2] / (info.hash[2:] + ".pkl")
    lock = disk.lock(KEY)
    assert lock.acquire(timeout=0)
    # a node lock is one byte of locks/nodes.lock (no file per node), held as an open file description lock
    assert sorted(p.name for p in (disk.root / "locks").iterdir()) == ["nodes.lock"]
    assert _locked_bytes(disk.root) == [("OFDLCK", "-1", str(node_offset(KEY)))]
    lock.release()
    assert _locked_bytes(disk.root) == []
    posix = DiskStore(disk.root)
    posix._lock_kind = "posix"  # macOS, Linux < 3.15: the same byte, as a lock of this process
    lock = posix.lock(KEY)
    assert lock.acquire(timeout=0)
    assert _locked_bytes(disk.root) == [("POSIX", str(os.getpid()), str(node_offset(KEY)))]
    lock.release()
    flock_store = DiskStore(disk.root)
    flock_store._lock_kind = "flock"  # a filesystem with flock only: a flock file per node
    flock_store.lock(KEY).acquire(timeout=0)
    assert (disk.root / "locks" / KEY[:2] / (KEY + ".lock")).exists()


def _locked_bytes(root: Path) -> list[tuple[str, str, str]]:
    """(kind, pid, start) of the locks held on root/locks/nodes.lock, from /proc/locks
    ("N: OFDLCK ADVISORY WRITE -1 maj:min:inode start end")."""
    inode = os.stat(root / "locks" / "nodes.lock").st_ino
    with open("/proc/locks") as f:
        return [(fields[1], fields[4], fields[6]) for fields in map(str.split, f)
                if fields[1] != "->" and fields[5].endswith(f":{inode}") and fields[6] == fields[7]]


def _fcntl_failing(monkeypatch, errno_: int, commands: str) -> None:
    """Make fcntl's lock commands fail with errno_: "ofd" (F_OFD_*) or "all" (lockf and F_OFD_* too)."""
    import fcntl

    real = fcntl.fcntl

    def fails(fd, cmd, arg=0):
        if cmd in (fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW, fcntl.F_OFD_GETLK):
            raise OSError(errno_, os.strerror(errno_))
        return real(fd, cmd, arg)

    def lockf_fails(*args):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(fcntl, "fcntl", fails)
    if commands == "all":
        monkeypatch.setattr(fcntl, "lockf", lockf_fails)


def test_a_kernel_without_open_file_description_locks_takes_the_byte_as_a_posix_lock(disk, monkeypatch):
    """Linux before 3.15 answers F_OFD_SETLK with EINVAL: the same byte as a classic POSIX lock."""
    _fcntl_failing(monkeypatch, errno.EINVAL, "ofd")
    disk.check_locking()
    assert disk._lock_kind == "posix"
    lock = disk.lock(KEY)
    assert lock.acquire(timeout=0)
    assert _locked_bytes(disk.root) == [("POSIX", str(os.getpid()), str(node_offset(KEY)))]
    lock.release()


def test_a_filesystem_with_flock_only_gets_flock_files(disk, monkeypatch):
    """NFS mounted local_lock=flock without lockd: fcntl locks say ENOLCK, flock works."""
    _fcntl_failing(monkeypatch, errno.ENOLCK, "all")
    disk.check_locking()
    lock = disk.lock(KEY)
    assert lock.acquire(timeout=0)
    assert (disk.root / "locks" / KEY[:2] / (KEY + ".lock")).exists()
    lock.release()


def test_lock_names_spread_over_bytes():
    """A name's byte is a 62-bit hash of it: distinct for distinct names, the same in every process."""
    names = [KEY, KEY + ".scope", "cd" + "0" * 62] + [f"{i:064x}" for i in range(1000)]
    offsets = {node_offset(n) for n in names}
    assert len(offsets) == len(names) and all(0 <= o < PROBE_OFFSET for o in offsets)
    assert node_offset(KEY) == 0x1268F1FA05DA4B6C  # pinned: processes of two orch versions must agree


def test_directories_removed_behind_our_back_are_remade(disk, tmp_path):
    disk.ingest(write(tmp_path / "a", b"one"))
    disk.new_staging_dir()
    rmtree_force(disk.root / "objects")
    rmtree_force(disk.root / "tmp")
    info = disk.ingest(write(tmp_path / "b", b"two"))
    assert disk.object_path(info).read_bytes() == b"two"
    assert disk.new_staging_dir().is_dir()


# -- fsutil ---------------------------------------------------------------------------------------


def test_atomic_writes(tmp_path):
    atomic_write_bytes(tmp_path / "new" / "dir" / "a.bin", b"\x00\x01")
    atomic_write_bytes(tmp_path / "b.txt", "héllo".encode())
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    atomic_write_json(tmp_path / "c.json", {"z": None})  # replaces
    assert (tmp_path / "new" / "dir" / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text("utf-8") == "héllo"
    assert (tmp_path / "c.json").read_text() == '{"z":null}'
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("kind", [bytes, bytearray, "doubles"])
def test_write_all_writes_every_byte_in_slices_through_short_writes(tmp_path, monkeypatch, kind):
    """No os.write gets LARGE_WRITE bytes or more (one large write into a new file is slow on some
    kernels and VMs, see fsutil.LARGE_WRITE), a short write is continued where it stopped, and a
    rest below LARGE_WRITE is one write."""
    import array

    from orchestrator import fsutil

    raw = os.urandom(3 * fsutil.WRITE_SLICE + 12_345)
    data = memoryview(array.array("d", raw[: len(raw) // 8 * 8])) if kind == "doubles" else kind(raw)
    expected = bytes(data)
    sizes, real_write = [], os.write

    def short_write(fd, view):
        sizes.append(len(view))
        return real_write(fd, view[: 1000] if len(sizes) % 3 == 0 else view)

    monkeypatch.setattr(fsutil.os, "write", short_write)
    atomic_write_bytes(tmp_path / "big.bin", data)
    monkeypatch.undo()
    assert (tmp_path / "big.bin").read_bytes() == expected
    assert max(sizes) < fsutil.LARGE_WRITE and sum(sizes) > len(expected)  # sliced, and short writes resumed
    assert sizes.count(fsutil.WRITE_SLICE) >= 2 and sizes[-1] > fsutil.WRITE_SLICE  # the rest in one call

    sizes.clear()
    monkeypatch.setattr(fsutil.os, "write", short_write)
    atomic_write_bytes(tmp_path / "frame.bin", raw[: fsutil.WRITE_SLICE + 50])  # e.g. a pickle frame
    monkeypatch.undo()
    assert sizes == [fsutil.WRITE_SLICE + 50]
    assert temp_files(tmp_path) == []


def test_atomic_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    atomic_write_json(tmp_path / "keep.json", [1])
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "keep.json", "not bytes")  # fails mid-write
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "dir.json", b"x")  # fails at the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "keep.json"]
    assert (tmp_path / "keep.json").read_text() == "[1]"


def test_make_readonly_and_rmtree_force(tmp_path):
    tree = make_tree(tmp_path / "t")
    (tree / "link").symlink_to(tmp_path / "outside")
    write(tmp_path / "outside", b"o").chmod(0o640)
    make_readonly(tree)
    assert stat.S_IMODE(tree.stat().st_mode) == 0o555
    assert stat.S_IMODE((tree / "sub" / "b.bin").stat().st_mode) == 0o444
    assert stat.S_IMODE((tmp_path / "outside").stat().st_mode) == 0o640  # links are not followed
    rmtree_force(tree)
    assert not tree.exists()
    f = write(tmp_path / "f", b"x")
    make_readonly(f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o444
    rmtree_force(f)
    rmtree_force(f, missing_ok=True)
    with pytest.raises(FileNotFoundError):
        rmtree_force(f)


def test_staging_paths_are_unique_and_not_created(store):
    a, b = store.new_staging_path("s"), store.new_staging_path("s")
    assert a != b and not a.exists() and not b.exists()
    assert a.parent.is_dir()  # so that the stage (or a cacher) can create it with one mkdir
    a.mkdir()
    (a / "f").write_text("x")
    info = store.ingest(a / "f")
    assert store.object_path(info).read_text() == "x"


def test_heads_put_get_overwrite(store):
    name = "cd" + "2" * 62
    assert store.get_head(name) is None
    store.put_head(name, Head("a" * 64, 1.0, COMPONENTS))
    store.put_head(name, Head("b" * 64, 2.0, COMPONENTS))
    assert store.get_head(name) == Head("b" * 64, 2.0, COMPONENTS)
    with pytest.raises(ValueError):
        store.put_head("../escape", Head("a" * 64, 1.0, COMPONENTS))



def test_entry_and_head_stored_together(store):
    name = "cd" + "3" * 62
    first, second = entry("1" * 16 + "-" + "a" * 40, 1.0), entry("2" * 16 + "-" + "a" * 40, 2.0)
    store.put_entry_and_head(first, name)
    store.put_entry_and_head(second, name)  # the head moves on, the first entry stays whole
    assert store.get_head(name) == Head(KEY, 2.0, COMPONENTS, second.trace_id)
    assert [e.trace_id for e in store.get_entries(KEY)] == [second.trace_id, first.trace_id]
    assert store.get_entry(KEY, first.trace_id) == first and store.get_entry(KEY, second.trace_id) == second
    store.put_head(name, Head("b" * 64, 3.0, COMPONENTS))  # a head written on its own replaces the link
    assert store.get_head(name) == Head("b" * 64, 3.0, COMPONENTS) and store.get_entry(KEY, second.trace_id) == second


def test_head_is_a_link_of_its_entry_or_written_where_links_are_refused(disk, monkeypatch):
    import errno

    name = "cd" + "4" * 62
    e = entry("1" * 16 + "-" + "a" * 40, 1.0)
    disk.put_entry_and_head(e, name)
    head_file = disk.root / "refs" / name[:2] / (name + ".json")
    entry_file = disk.root / "entries" / KEY[:2] / KEY / (e.trace_id + ".json")
    assert os.path.samefile(head_file, entry_file)  # no inode of its own
    assert temp_files(disk.root) == []

    def refused(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    later = entry("2" * 16 + "-" + "a" * 40, 2.0)
    disk.put_entry_and_head(later, name)
    monkeypatch.undo()
    assert disk.get_head(name) == Head(KEY, 2.0, COMPONENTS, later.trace_id)
    assert not os.path.samefile(head_file, entry_file) and disk.get_entry(KEY, e.trace_id) == e
    assert temp_files(disk.root) == []


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _leaf_paths(v, prefix + (k,))


def test_the_fast_entry_parser_accepts_exactly_what_the_checked_one_accepts():
    """Every field of a valid entry replaced by values of other types, or removed: both parsers
    must agree on every variant (the fast one may only ever refuse and defer)."""
    from orchestrator.store.entries import _checked_entry, _fast_entry

    good = entry("t", 1.0, outputs={"x": H1}, files={"a": H2},
                 components=KeyComponents("m:agg", 3, "c" * 64, "d" * 64, {"x@a": H1}, ("a",)),
                 metrics={"loss": {"last": 0.5, "step": 3, "min": 0.5, "min_step": 3, "max": 1.0, "max_step": 0, "n": 4},
                          "acc": {"last": 0.9, "step": None}},
                 series=ObjectInfo(H2, 10, "file", ".jsonl")).to_json()
    assert _fast_entry(good) == _checked_entry(good)  # a valid entry does take the fast path
    variants = [good]
    for path in _leaf_paths(good):
        variants.append(_without(good, *path))
        for value in (None, 0, -1, True, 2.5, float("nan"), "", "x", "a" * 64, [], ["a", None], {}, {"h": "x"}):
            variants.append(_with(good, value, *path))
    agreed = 0
    for v in variants:
        try:
            checked = _checked_entry(v)
        except EntryError:
            checked = None
        try:
            fast = _fast_entry(v)
        except Exception:
            fast = None
        if fast is not None:
            assert fast == checked, v
        agreed += checked is not None
    assert agreed > 10  # some variants are still valid entries (e.g. another version or a string size hint)


def test_a_setgid_cache_root_is_group_shared_and_gives_the_group_the_owners_bits(tmp_path):
    from orchestrator.store import sharing

    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    os.chmod(shared, 0o2770)
    os.chmod(private, 0o755)
    assert sharing.is_group_shared(shared) and sharing.is_group_shared(shared / "not" / "yet")
    assert not sharing.is_group_shared(private) and not sharing.is_group_shared(private / "cache")
    before = os.umask(0o077)
    try:
        assert not sharing.apply_group_policy(private) and sharing.current_umask() == 0o077
        assert sharing.apply_group_policy(shared / "cache")
        assert sharing.current_umask() == 0o007  # the group gets the owner's bits; others keep the umask
        DiskStore(shared / "cache").new_staging_dir()
        d = shared / "cache" / "tmp"
        assert stat.S_IMODE(d.stat().st_mode) & 0o2070 == 0o2070  # inherited setgid, group rwx
    finally:
        os.umask(before)
        sharing._applied.clear()


def test_a_refused_write_names_the_record_the_cause_and_what_to_do(tmp_path, monkeypatch):
    import errno

    from orchestrator import fsutil
    from orchestrator.errors import CacheWriteError
    from orchestrator.fsutil import atomic_write_bytes
    from orchestrator.store.failures import write_error

    def full(fd, data):  # a file on a full disk: created, but no byte fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "write_all", full)
    target = tmp_path / "entries" / "x.json"
    target.parent.mkdir()
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"{}")
    monkeypatch.undo()
    assert info.value.filename == str(target) and list(target.parent.iterdir()) == []  # no temp left
    err = write_error(info.value, "stage train[default]: its cache entry", tmp_path)
    assert isinstance(err, CacheWriteError) and err.errno == errno.ENOSPC
    assert str(err).startswith(f"stage train[default]: its cache entry: cannot write {target}: no space left on device")
    assert "free space" in str(err) and "re-run continues" in str(err)


# -- objects from bytes (cachers.Cacher.prepare_in_memory) -----------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("data", [b"", b"\x80\x05K\x01.", os.urandom(70_000), os.urandom(300_001)],
                         ids=["empty", "pickle", "70k", "300k"])
def test_ingest_bytes_stores_the_object_ingest_of_the_file_would(tmp_path, data, umask):
    """Same hash, size, kind, name, bytes and mode 0o444 whatever the umask, nothing left in tmp/."""
    by_file, by_bytes = DiskStore(tmp_path / "a"), DiskStore(tmp_path / "b")
    before = os.umask(umask)
    try:
        info = by_file.ingest(write(tmp_path / "stage" / "out.pkl", data), ".pkl")
        got = by_bytes.ingest_bytes(data, ".pkl")
    finally:
        os.umask(before)
    assert got == info == ObjectInfo(hashlib.sha256(data).hexdigest(), len(data), "file", ".pkl")
    a, b = by_file.object_path(info), by_bytes.object_path(got)
    assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
    assert b.read_bytes() == data
    assert stat.S_IMODE(b.stat().st_mode) == stat.S_IMODE(a.stat().st_mode) == 0o444
    assert [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()] == [b.name]


def test_ingest_bytes_of_stored_content_keeps_the_object_and_replaces_a_damaged_one(disk):
    info = disk.ingest_bytes(b"hello", ".json")
    path = disk.object_path(info)
    inode = path.stat().st_ino
    assert disk.ingest_bytes(b"hello", ".json") == info and path.stat().st_ino == inode  # stored once
    path.chmod(0o644)
    path.write_bytes(b"hell")  # truncated: the cheap check sees it
    assert disk.ingest_bytes(b"hello", ".json") == info
    assert path.read_bytes() == b"hello" and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert len(list((disk.root / "quarantine").iterdir())) == 1
    assert temp_files(disk.root) == []


def test_ingest_bytes_in_memory_store(tmp_path):
    from orchestrator.store import MemoryStore

    store = MemoryStore()
    info = store.ingest_bytes(b"abc", ".pkl")
    assert info == ObjectInfo(hashlib.sha256(b"abc").hexdigest(), 3, "file", ".pkl")
    assert store.object_path(info).read_bytes() == b"abc"


def test_a_full_disk_while_storing_bytes_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    """ingest_bytes writes with os.write, whose errors name no file: the error must say which one
    (write_error's message), and no temp file is left in tmp/."""
    import errno

    from orchestrator.store import disk

    store = DiskStore(tmp_path / "cache")
    store.ingest_bytes(b"warm", ".pkl")  # tmp/ and a shard exist

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "write", full)
    with pytest.raises(OSError) as info:
        store.ingest_bytes(b"x" * 100, ".pkl")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and "/tmp/.object." in info.value.filename
    assert [p.name for p in (tmp_path / "cache" / "tmp").iterdir() if p.name.startswith(".object.")] == []


def test_keeping_the_newest_code_manifests_survives_a_damaged_time_stamp(disk, monkeypatch):
    """Past CODE_MANIFESTS_KEPT the oldest go; a hand-edited "seen" goes first instead of failing the
    sort (a str among floats: TypeError)."""
    import orchestrator.store.disk as disk_module

    monkeypatch.setattr(disk_module, "CODE_MANIFESTS_KEPT", 3)
    item = {"m:f": ["d" * 64, "f.py"]}
    disk.put_code_manifests({f"{i:064x}": CodeManifest(item) for i in range(3)})
    with open(disk._code_path) as f:
        stored = json.load(f)
    stored["manifests"][f"{0:064x}"]["seen"] = "yesterday"
    stored["manifests"][f"{1:064x}"]["seen"] = 10**400
    atomic_write_json(disk._code_path, stored)
    fresh = DiskStore(disk.root)
    fresh.put_code_manifests({f"{9:064x}": CodeManifest(item)})
    with open(fresh._code_path) as f:
        kept = json.load(f)["manifests"]
    assert set(kept) == {f"{i:064x}" for i in (1, 2, 9)}  # the two damaged stamps count as oldest; the first of them went
