"""The entry index: the already-checked entries an experiment's last planning read, each with the
stat signature its file had, so that the next planning of a cached node does one `stat` instead of
opening, parsing and checking the entry's JSON (~125k of ~450k instructions per cached node).

Why a record can be trusted: entries are immutable files, replaced only by rename (a new inode),
and a record is used only when the file at that path has exactly the signature (device, inode,
size, mtime_ns, ctime_ns) it had when the record was read from it. A record is kept only for a file
whose ctime is more than RACY_S older than the filesystem's clock at the start of the planning that
read it (a probe file gives that clock: no skew between this machine and a shared filesystem), so
any later change of the file, even in place and within the same clock tick, changes its ctime. An
index file that is truncated, corrupt (crc32 of the payload: damage, not forgery; whoever can write
the cache can write its pickles too), of another format or Python marshal
version, or written for another cache directory is ignored as if absent: it can only save work
that reading the entry would have done with the same result, never decide a hit on its own.

An entry a run wrote is recorded too, without waiting RACY_S (learn_written, then written_record
when the index is saved): its content is the Entry its writer wrote, and the stat signature was
taken after the writer's last change to the file (the head's hard link), only while the file at
its path was still the one the writer made (same device, inode, size and mtime: another writer of
the same key and trace may have replaced it). What the racy rule would add for such a record is
protection against a change within the same timestamp tick as that stat that keeps the size and
inode: an in-place edit, which no orch process makes (entries are only ever replaced by rename), or
the file replaced twice by other writers of the same key and trace, the second reusing its inode
number with the same size, within that tick (up to a second on filesystems with coarse
timestamps). Either way the index would serve a computation orch wrote, of the same key and trace.
So the run after a sweep reads no entry file either (before, it parsed every entry: 1k nodes, +45%
instructions). The run saves the index at its end, after its manifest.

One index per experiment file (`<cache>/index/<sha256 of its path>.idx`), written by rename after
planning when it learned something; several writers lose at most speed, never correctness.

It also keeps the planner's hints: for each stage, the sets of parameters and files its entries
were seen to read (core.plan's `signatures`). With them, the first node of a stage predicts the
name of its entry and stats that one file, as every later node of the stage does, instead of
listing the key's directory and reading every entry in it. A hint only chooses which file to try;
what that file says is checked as always, and a miss still lists the directory.
"""

from __future__ import annotations

import marshal
import os
import zlib

from ..fsutil import LazyLogger, json_exact, write_all
from .entries import Entry, EntryError, KeyComponents, ObjectInfo, Read, StoredOutput, check_object, metrics_ok

log = LazyLogger("orchestrator.store")
MAGIC = b"orch-entry-index 2\n"  # then the payload's crc32 (4 bytes, big-endian), then the payload
#: how much older than the planning's start (filesystem clock) an entry file must be to be indexed
#: (the environment may only change it for tests: tests/test_fuzz.py sets 0 to index every entry)
RACY_S = max(0.0, float(os.environ.get("ORCH_INDEX_RACY_S") or 2.0))
#: records an experiment did not use this time are kept while they are at most this many times the used ones
KEEP_UNUSED = 1


def signature(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def pack(e: Entry) -> bytes:
    """An entry as marshal bytes (unpack(pack(e)) == e for entries parsed from JSON); unpacked at each
    use, so no two lookups share a mutable part."""
    c = e.components
    return marshal.dumps((e.key, e.trace_id, e.stage, e.param_set, e.created,
            (c.stage, c.version, c.code, c.decl, c.inputs, c.sets),
            {p: (r.hash, r.shown) for p, r in e.reads.items()}, e.files,
            {n: (tuple(o.object), o.cacher, o.metadata) for n, o in e.outputs.items()},
            e.duration_s, e.accepted, e.metrics, tuple(e.series) if e.series is not None else None))


def written_record(entry: Entry, sig: tuple) -> tuple | None:
    """(sig, pack(entry)) for an entry written as JSON whose file had the stat signature `sig` once
    its writer was done with it (DiskStore.put_entry_and_head); None
    when parsing that file back could give anything but `entry` itself: a value that JSON does not
    keep as it is (a tuple, a subclass, a key that is not a str, a float that is not finite), an int
    where the reader makes a float, or a field the reader would refuse (entries.Entry.from_json).
    (Loops, not generator expressions: every node that runs comes through here.)"""
    c = entry.components
    if not (type(entry.key) is str and type(entry.trace_id) is str and _str(entry.stage)
            and _str(entry.param_set) and type(entry.created) is float and type(entry.duration_s) is float
            and json_exact(entry.created) and json_exact(entry.duration_s)
            and (entry.metrics is None or (metrics_ok(entry.metrics) and json_exact(entry.metrics)))
            and (entry.series is None or _object_ok(entry.series))
            and (entry.accepted is None or _strs(entry.accepted)) and _strs(entry.files)
            and type(c) is KeyComponents and _str(c.stage) and _str(c.code) and _str(c.decl)
            and _strs(c.inputs) and (c.version is None or _str(c.version) or type(c.version) is int)
            and (c.sets is None or (type(c.sets) is tuple and all(_str(s) for s in c.sets)))):
        return None
    for path, r in entry.reads.items():
        if not _str(path) or type(r) is not Read or type(r.hash) is not str or not json_exact(r.shown):
            return None
    for name, o in entry.outputs.items():
        if (not _str(name) or type(o) is not StoredOutput or not _object_ok(o.object)
                or type(o.cacher) is not tuple or len(o.cacher) != 2 or not _str(o.cacher[0])
                or not json_exact(o.cacher[1]) or not json_exact(o.metadata)):
            return None
    try:
        return sig, pack(entry)
    except ValueError:  # a value marshal cannot write
        return None


def _object_ok(info: object) -> bool:
    """An ObjectInfo the reader accepts as it is (entries.ObjectInfo.from_json)."""
    if type(info) is not ObjectInfo or type(info.size) is not int or info.size < 0:
        return False
    try:
        check_object(info)
    except EntryError:
        return False
    return True


def _str(s: object) -> bool:
    """A str that JSON gives back as it is (fsutil.json_exact: no surrogates)."""
    return type(s) is str and (s.isascii() or json_exact(s))


def _strs(d: dict) -> bool:
    """A dict of such str to such str."""
    if type(d) is not dict:
        return False
    for k, v in d.items():
        if not _str(k) or not _str(v):
            return False
    return True


_new = tuple.__new__  # a NamedTuple from a tuple of its fields, without its __new__ (a third of the cost)


def unpack(data: bytes) -> Entry:
    key, trace, stage, pset, created, c, reads, files, outs, duration, accepted, metrics, series = marshal.loads(data)
    if len(c) != 6 or (series is not None and len(series) != 4):
        raise ValueError("not an entry")
    outputs = {}
    for n, (o, cacher, md) in outs.items():
        if len(o) != 4:
            raise ValueError("not an entry")
        outputs[n] = _new(StoredOutput, (_new(ObjectInfo, o), cacher, md))
    return _new(Entry, (key, trace, stage, pset, created, _new(KeyComponents, c),
                        {p: Read(*r) for p, r in reads.items()} if reads else {}, files, outputs, duration, accepted,
                        metrics, _new(ObjectInfo, series) if series is not None else None))


class EntryIndex:
    """Records "<key>/<trace_id>" -> (signature, pack(entry)) of one experiment's entries."""

    def __init__(self, path: str, entries_dir: str, writable: bool):
        self.path, self._entries_dir = path, entries_dir
        self._old, self._hints = _load(path, entries_dir)
        self._new_hints: dict | None = None  # hints to write, when they differ from the loaded ones
        self._used: dict[str, tuple] = {}  # records confirmed or learned by this planning
        self._written: dict[str, tuple] = {}  # name -> (signature, Entry) of entries written since (learn_written)
        self._learned = 0
        # `writable`: the cache is not read-only for this user. Entries read are learned only once the
        # cache exists (the filesystem clock of RACY_S is a file made in it); entries written, always.
        self._writable = writable
        cache_exists = writable and os.path.isdir(os.path.dirname(os.path.dirname(path)))
        self._clock = _fs_clock(os.path.dirname(path)) if cache_exists else None

    def get(self, name: str, path: str) -> Entry | None | bool:
        """The entry at `path` if its record still holds; None if the file is gone; False if the file
        must be read (no record, another signature, or a record that does not unpack)."""
        rec = self._old.get(name)
        if rec is None:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError:
            return False  # the read path decides, and warns
        if signature(st) != rec[0]:
            return False
        try:
            entry = unpack(rec[1])
        except (TypeError, ValueError, EOFError):
            return False
        if f"{entry.key}/{entry.trace_id}" != name:
            return False
        self._used[name] = rec
        return entry

    def learn(self, name: str, st: os.stat_result, entry: Entry) -> None:
        """`entry` was just parsed from a file whose fstat (taken after reading it) is `st`."""
        if self._clock is not None and st.st_ctime_ns < self._clock - int(RACY_S * 1e9):
            try:
                self._used[name] = (signature(st), pack(entry))
            except ValueError:  # a value marshal cannot write: that entry is read from its file
                return
            self._learned += 1

    def learn_written(self, name: str, sig: tuple, entry: Entry) -> None:
        """`entry` ("<key>/<trace id>": `name`), which this run wrote and whose file had the stat
        signature `sig` then; checked and packed when the index is saved (written_record), so that a
        run holds no second copy of what it wrote until then."""
        if self._writable:
            self._written[name] = (sig, entry)
            self._learned += 1

    def hints(self) -> dict[str, dict[str, tuple]]:
        """stage id -> {read signature: (parameter paths, file names)}, as the last planning left them."""
        return {stage: dict(sigs) for stage, sigs in self._hints.items()}

    def keep_hints(self, hints: dict[str, dict[str, tuple]]) -> None:
        """The hints to save with the index (written only if they or the records changed)."""
        if hints != self._hints:
            self._new_hints = {stage: dict(sigs) for stage, sigs in hints.items()}

    def save(self) -> None:
        """Write the index if this planning learned a record or a hint (atomic; a failure costs only speed)."""
        if not self._writable or not (self._learned or self._new_hints is not None):
            return
        hints = self._new_hints if self._new_hints is not None else self._hints
        for name, (sig, entry) in self._written.items():
            record = written_record(entry, sig)
            if record is not None:
                self._used[name] = record
            else:
                self._used.pop(name, None)  # an older record of that name: not of this file
        self._written = {}
        records = dict(self._used)
        unused = [(n, r) for n, r in self._old.items() if n not in records]
        if len(unused) <= KEEP_UNUSED * len(records):
            records.update(unused)
        tmp = f"{self.path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            payload = marshal.dumps((self._entries_dir, records, hints))
            os.makedirs(os.path.dirname(self.path), exist_ok=True)  # a first run: the cache was made by it
            with open(tmp, "xb", buffering=0) as f:  # two writes: no copy of the payload with its header in front
                write_all(f.fileno(), MAGIC + zlib.crc32(payload).to_bytes(4, "big"))
                write_all(f.fileno(), payload)
            os.replace(tmp, self.path)
        except BaseException as e:  # (a second Ctrl-C while the index of an interrupted run is saved)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not isinstance(e, (OSError, ValueError)):
                raise
            log.debug("entry index %s not written: %s", self.path, e)
        self._old, self._learned, self._hints, self._new_hints = records, 0, hints, None


def _load(path: str, entries_dir: str) -> tuple[dict, dict]:
    """The records and hints of the index at `path`, or empty ones for anything but an intact index
    of this cache."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}, {}
    head = len(MAGIC) + 4
    if len(data) < head or not data.startswith(MAGIC):
        return {}, {}
    # the payload through a view, not a slice: a 100,000-entry index is ~70 MB, and each copy of it
    # is as many fresh pages for the kernel to fault in and zero (measured: 0.33 -> 0.23 s, 84k -> 48k faults)
    payload = memoryview(data)[head:]
    try:
        if zlib.crc32(payload).to_bytes(4, "big") != data[len(MAGIC):head]:
            return {}, {}
        root, records, hints = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return {}, {}
    finally:
        payload.release()
    if root != entries_dir or type(records) is not dict or type(hints) is not dict:
        return {}, {}
    records = {n: r for n, r in records.items()
               if type(n) is str and type(r) is tuple and len(r) == 2 and type(r[0]) is tuple and type(r[1]) is bytes}
    return records, {stage: sigs for stage, sigs in hints.items() if type(stage) is str and _hints_ok(sigs)}


def _hints_ok(sigs: object) -> bool:
    """{signature: (parameter paths, file names)}, all str."""
    return type(sigs) is dict and all(
        type(sig) is str and type(v) is tuple and len(v) == 2 and all(
            type(names) is tuple and all(type(n) is str for n in names) for names in v)
        for sig, v in sigs.items())


def _fs_clock(directory: str) -> int | None:
    """The filesystem's current time (the ctime of a file made now), in ns; None if nothing can be made."""
    probe = os.path.join(directory, f".probe.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError:
        return None
