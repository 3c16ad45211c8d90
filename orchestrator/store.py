"""Where bytes live: content-addressed objects and one small JSON entry per (node key, trace).

Objects are files or directory trees named by their content hash, moved in by rename and read-only
once there, so identical artifacts are stored once and a stored object never changes under a reader.
Entries are written atomically, one file each: no shared file is ever rewritten, so any number of
processes (local workers, MPI ranks on a shared filesystem) can use one cache. A per-node file lock
makes two processes that need the same node compute it once.

`Store` is the interface the planner and runner code against; `DiskStore` is the real thing and
`MemoryStore` its in-memory twin for fast tests. One test suite runs against both.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import itertools
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from . import hashing
from .errors import DamagedObjectError, StoreError
from .fsutil import atomic_write_bytes, atomic_write_json, make_readonly, make_writable_dir, rmtree_force

log = logging.getLogger(__name__)
_STAGING_COUNTER = itertools.count()

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # a key or trace id: one safe path component
_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_EXT_RE = re.compile(r"(\.[A-Za-z0-9_-]+)*\Z")  # "", ".pkl", ".tar.gz"
_OBJECT_NAME_RE = re.compile(r"([0-9a-f]{62})((?:\.[A-Za-z0-9_-]+)*)\Z")  # name inside objects/ab/


@dataclass(frozen=True)
class ObjectInfo:
    """What an entry records about one stored output: enough to find it and validate it cheaply."""

    hash: str  # sha256 hex of the file, or hashing.hash_dir of the tree
    size: int  # file size, or the sum of the file sizes of the tree
    kind: str  # "file" | "dir"
    ext: str = ""  # e.g. ".pkl": stored objects keep meaningful names for external tools

    def to_json(self) -> dict:
        return {"hash": self.hash, "size": self.size, "kind": self.kind, "ext": self.ext}

    @classmethod
    def from_json(cls, d: dict) -> ObjectInfo:
        return cls(d["hash"], int(d["size"]), d["kind"], d.get("ext", ""))


def _check_name(what: str, name: str) -> str:
    """Keys and trace ids become path components: refuse anything that could escape the cache."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} {name!r}: expected letters, digits, '_', '.', '-'")
    return name


def _check_info(info: ObjectInfo) -> None:
    if not _HASH_RE.match(info.hash) or not _EXT_RE.match(info.ext) or info.kind not in ("file", "dir"):
        raise ValueError(f"invalid object {info!r}: expected a sha256 hex hash, kind file|dir, ext like '.pkl'")


def _created(entry: dict) -> float:
    created = entry.get("created")
    return float(created) if isinstance(created, (int, float)) else 0.0


def _signature(path: str, kind: str) -> tuple:
    """What must be unchanged for an earlier verification of `path` to still hold: (size, mtime_ns,
    inode) of the file, or of every file in the tree (a directory's own mtime misses edits inside)."""
    if kind == "file":
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    sig = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        sig.extend((dirpath, name) for name in dirnames)  # empty directories count in hash_dir
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            sig.append((dirpath, name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sig)


# Object path -> signature when its content last matched its hash, shared by every store in the
# process: an object is re-hashed once per process, and again only if its file changes.
_VERIFIED: dict[str, tuple] = {}


class NodeLock(abc.ABC):
    """Exclusive lock for computing one node. Not reentrant; use one NodeLock per acquisition."""

    @abc.abstractmethod
    def acquire(self, timeout: float = -1) -> bool:
        """Wait at most `timeout` seconds (forever if negative); False on timeout."""

    @abc.abstractmethod
    def release(self) -> None: ...

    def __enter__(self) -> NodeLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _acquire_thread_lock(lock: threading.Lock, timeout: float) -> bool:
    return lock.acquire() if timeout < 0 else lock.acquire(timeout=timeout)


class _ThreadNodeLock(NodeLock):
    def __init__(self, lock: threading.Lock):
        self._lock = lock

    def acquire(self, timeout: float = -1) -> bool:
        return _acquire_thread_lock(self._lock, timeout)

    def release(self) -> None:
        self._lock.release()


# Threads of one process are excluded by a threading.Lock per lock file, processes by flock on it:
# on NFS, flock is emulated with per-process fcntl locks that do not exclude threads of one process.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _reset_thread_locks_after_fork() -> None:
    """A forked child must not inherit locks held by its parent's threads (it would wait forever)."""
    global _THREAD_LOCKS_GUARD
    _THREAD_LOCKS.clear()
    _THREAD_LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_thread_locks_after_fork)


def _thread_lock_for(path: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


class _FileNodeLock(NodeLock):
    """flock(2) on a per-node lock file, as filelock's UnixFileLock does, minus its per-call
    bookkeeping (a lock per executed node is on the hot path). The kernel drops the lock when the
    holder dies, so a kill -9 never leaves a stale lock."""

    _POLL = 0.05  # seconds between tries when a timeout is given (a blocking wait sleeps in the kernel)

    def __init__(self, path: str):
        self._path = path
        self._thread_lock = _thread_lock_for(path)
        self._fd: int | None = None

    def acquire(self, timeout: float = -1) -> bool:
        deadline = time.monotonic() + timeout
        if not _acquire_thread_lock(self._thread_lock, timeout):
            return False
        try:
            fd = self._open()
        except BaseException:
            self._thread_lock.release()
            raise
        try:
            if not self._flock(fd, timeout, deadline):
                os.close(fd)
                self._thread_lock.release()
                return False
        except BaseException:
            os.close(fd)
            self._thread_lock.release()
            raise
        self._fd = fd
        return True

    def _open(self) -> int:
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the locks directory was removed (orch cache gc): make it again
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)

    def _flock(self, fd: int, timeout: float, deadline: float) -> bool:
        import fcntl

        try:
            if timeout < 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return True
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    time.sleep(min(self._POLL, left))
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise StoreError(
                    f"cannot lock {self._path}: its filesystem does not support flock; mount it with "
                    "flock support or put the cache elsewhere (--cache DIR / ORCH_CACHE)"
                ) from e
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the flock
        finally:
            self._thread_lock.release()


class Store(abc.ABC):
    """Objects by content hash, entries by node key, locks by node key (see module docstring)."""

    root: Path | None = None
    _verified = _VERIFIED

    @abc.abstractmethod
    def ingest(self, path: Path, ext: str = "") -> ObjectInfo:
        """Move the file or directory at `path` into the store under its content hash (`path` is
        consumed); an object already stored is kept and the new copy discarded. Read-only once in."""

    @abc.abstractmethod
    def has_object(self, info: ObjectInfo) -> bool:
        """Cheap validation at lookup: exists and (files) size matches. No hashing."""

    @abc.abstractmethod
    def object_path(self, info: ObjectInfo, verify: bool = True) -> Path:
        """A path to read the object from. With verify, the content is re-hashed once per process per
        (path, size, mtime_ns, inode); a missing or damaged object raises DamagedObjectError and a
        damaged one is moved into quarantine so that re-running its producer stores a good copy."""

    @abc.abstractmethod
    def delete_object(self, info: ObjectInfo) -> None:
        """Remove an object (for `orch cache gc`); absent is fine."""

    @abc.abstractmethod
    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Every stored object, with its actual size and kind as found (for `orch cache ls/gc/verify`)."""

    @abc.abstractmethod
    def get_entries(self, key: str) -> list[dict]:
        """All entries under a node key, newest first by entry["created"]; unreadable ones are skipped
        with a warning, never an exception (a damaged entry is a cache miss)."""

    @abc.abstractmethod
    def get_ref(self, name: str) -> dict | None:
        """A small named record (e.g. the last key of a stage on a parameter set), or None."""

    @abc.abstractmethod
    def put_ref(self, name: str, value: dict) -> None:
        """Write a named record atomically, last writer wins (one flat file: no directory per name)."""

    @abc.abstractmethod
    def get_entry(self, key: str, trace_id: str) -> dict | None:
        """One entry by name, or None: the fast path of a lookup whose trace id is predicted."""

    def get_entries_many(self, keys: Iterable[str]) -> dict[str, list[dict]]:
        """Entries of many keys at once (the planner looks nodes up in batches)."""
        return {key: self.get_entries(key) for key in keys}

    @abc.abstractmethod
    def put_entry(self, key: str, entry: dict) -> None:
        """Store `entry` under (key, entry["trace_id"]) atomically; the same pair overwrites."""

    @abc.abstractmethod
    def delete_entry(self, key: str, trace_id: str) -> None:
        """Remove one entry; absent is fine."""

    @abc.abstractmethod
    def iter_entries(self) -> Iterator[tuple[str, dict]]:
        """Every (key, entry) in the store, unreadable entries skipped with a warning."""

    @abc.abstractmethod
    def lock(self, key: str) -> NodeLock:
        """An exclusive lock for computing the node `key` (across threads and processes)."""

    def prune_locks(self, before: float) -> int:
        """Remove lock files made before `before` (epoch seconds) of nodes that have an entry and
        that nobody holds now; how many. (The in-memory twin has nothing to prune.)"""
        return 0

    def new_staging_path(self, prefix: str = "") -> Path:
        """A fresh, unique path in the staging area on the objects' filesystem, *not created*: a
        stage that never asks for a staging directory costs no mkdir/rmdir (slow on some disks)."""
        return Path(self._tmp_root()) / f"{prefix}-{os.getpid()}-{next(_STAGING_COUNTER)}-{os.urandom(4).hex()}"

    @abc.abstractmethod
    def _tmp_root(self) -> str:
        """The existing directory staging paths live in."""

    def scratch_path(self, name: str) -> Path:
        """A node's persistent scratch directory (not created): unlike staging, it survives a failed
        or killed run, so a long stage can resume from its own checkpoints; removed on success."""
        return Path(self._tmp_root()).parent / "scratch" / _check_name("scratch name", name)

    @abc.abstractmethod
    def new_staging_dir(self, prefix: str = "") -> Path:
        """A fresh empty directory on the objects' filesystem, so that ingest is a rename."""

    @abc.abstractmethod
    def _quarantine(self, info: ObjectInfo, path: str) -> str:
        """Move a damaged object out of the way; return where it went."""

    def _verify(self, info: ObjectInfo, path: str) -> None:
        """Re-hash `path` unless it was verified unchanged in this process; quarantine on mismatch."""
        try:
            sig = _signature(path, info.kind)
        except FileNotFoundError:
            raise DamagedObjectError(
                f"stored object {info.hash} is missing ({path}); treated as a cache miss"
            ) from None
        if self._verified.get(path) == sig:
            return
        kind, digest, size = hashing.hash_path(path)
        if (kind, digest, size) != (info.kind, info.hash, info.size):
            self._verified.pop(path, None)
            moved = self._quarantine(info, path)
            raise DamagedObjectError(
                f"stored object {info.hash} at {path} is damaged (content hash {digest}, {size} bytes; "
                f"expected {info.size}); moved to {moved}; treated as a cache miss"
            )
        self._verified[path] = sig


class DiskStore(Store):
    """The store on a (possibly shared) filesystem. Layout under root:
    objects/ab/<hash[2:]><ext>, entries/ab/<key>/<trace_id>.json, locks/ab/<key>.lock,
    tmp/ (staging, same filesystem as objects), quarantine/ (damaged objects, for inspection)."""

    def __init__(self, root: Path | str):
        self.root = Path(os.path.abspath(root))
        _check_root(self.root)
        r = str(self.root)
        self._objects, self._entries = os.path.join(r, "objects"), os.path.join(r, "entries")
        self._locks, self._tmp = os.path.join(r, "locks"), os.path.join(r, "tmp")
        self._quarantine_dir = os.path.join(r, "quarantine")
        self._made: set[str] = set()  # directories known to exist: no mkdir syscall per write

    def _ensure_dir(self, d: str) -> str:
        if d not in self._made:
            try:
                os.makedirs(d, exist_ok=True)
            except (PermissionError, FileExistsError, NotADirectoryError) as e:
                raise StoreError(f"cannot create {d} in the cache {self.root}: {e}; fix the "
                                 "permissions or choose another cache (--cache DIR / ORCH_CACHE)") from e
            self._made.add(d)
        return d

    def _in_dir(self, d: str, fn, *args):
        """fn(*args) with `d` existing; if `d` was removed since we made it (by `orch cache gc` in
        another process, say), make it again and retry once."""
        self._ensure_dir(d)
        try:
            return fn(*args)
        except FileNotFoundError:
            if os.path.isdir(d):
                raise
            self._made.discard(d)
            self._ensure_dir(d)
            return fn(*args)

    def _object_file(self, info: ObjectInfo) -> str:
        _check_info(info)
        return os.path.join(self._objects, info.hash[:2], info.hash[2:] + info.ext)

    def _entry_dir(self, key: str) -> str:
        return os.path.join(self._entries, key[:2], _check_name("node key", key))

    # -- objects -------------------------------------------------------------------------------
    def ingest(self, path: Path, ext: str = "") -> ObjectInfo:
        src = os.fspath(path)
        before = os.stat(src)  # taken before hashing: a later write would change it
        kind, digest, size = hashing.hash_path(src)
        info = ObjectInfo(digest, size, kind, ext)
        target = self._object_file(info)
        st = _lstat_or_none(target)
        if st is not None:
            if _looks_intact(st, info):
                rmtree_force(src)  # identical content already stored: keep the copy readers may use
                return info
            self._quarantine(info, target)  # wrong size or kind: a damaged copy must not block a good one
        if self._in_dir(os.path.dirname(target), self._move_in, src, target, kind) and kind == "file":
            sig = _signature(target, kind)  # rename keeps inode and mtime
            if sig == (before.st_size, before.st_mtime_ns, before.st_ino):
                self._verified[target] = sig  # hashed just now and unchanged since: no re-hash on load
        return info

    def _move_in(self, src: str, target: str, kind: str) -> bool:
        """Rename `src` into place, or copy it next to the objects first when it is a symlink (what
        it points to is stored, the link consumed) or on another filesystem (e.g. /tmp)."""
        if not os.path.islink(src):
            try:
                return self._place(src, target, kind)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        staging = str(self.new_staging_dir("ingest-"))
        try:
            copy = os.path.join(staging, "object")
            if kind == "file":
                shutil.copy2(src, copy)
            else:
                shutil.copytree(src, copy, symlinks=True)
            placed = self._place(copy, target, kind)
        finally:
            rmtree_force(staging, missing_ok=True)
        rmtree_force(src)
        return placed

    def _place(self, src: str, target: str, kind: str) -> bool:
        """Seal `src` read-only and rename it to `target`; False if another process stored it first."""
        if kind == "file":
            make_readonly(src)
            os.replace(src, target)  # a concurrent identical copy is simply replaced
            return True
        make_readonly(src, skip_top=True)  # moving a directory across parents needs write on it
        try:
            os.rename(src, target)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            rmtree_force(src)  # another process won the race with the same content
            return False
        os.chmod(target, 0o555)
        return True

    def has_object(self, info: ObjectInfo) -> bool:
        st = _lstat_or_none(self._object_file(info))
        return st is not None and _looks_intact(st, info)

    def object_path(self, info: ObjectInfo, verify: bool = True) -> Path:
        path = self._object_file(info)
        if verify:
            self._verify(info, path)
        return Path(path)

    def _quarantine(self, info: ObjectInfo, path: str) -> str:
        dest = os.path.join(self._ensure_dir(self._quarantine_dir),
                            f"{info.hash}{info.ext}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                make_writable_dir(path)  # renaming a directory into another parent needs write on it
            os.rename(path, dest)
        except FileNotFoundError:
            return dest + " (already moved by another process)"
        log.warning("stored object %s was damaged; moved to %s", info.hash, dest)
        return dest

    def delete_object(self, info: ObjectInfo) -> None:
        path = self._object_file(info)
        self._verified.pop(path, None)
        rmtree_force(path, missing_ok=True)

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """ObjectInfo per object found; size is the actual size (sum of file sizes for a tree)."""
        for shard in _listdir(self._objects):
            shard_dir = os.path.join(self._objects, shard)
            for name in _listdir(shard_dir):
                m = _OBJECT_NAME_RE.match(name)
                if len(shard) != 2 or not m:
                    continue
                path = os.path.join(shard_dir, name)
                if os.path.isdir(path):
                    yield ObjectInfo(shard + m.group(1), _tree_size(path), "dir", m.group(2))
                else:
                    yield ObjectInfo(shard + m.group(1), os.lstat(path).st_size, "file", m.group(2))

    # -- entries -------------------------------------------------------------------------------
    def get_entries(self, key: str) -> list[dict]:
        d = self._entry_dir(key)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):  # ".x.tmp": writes in progress
                entry = _read_entry(os.path.join(d, name))
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=_created, reverse=True)
        return entries

    def get_entry(self, key: str, trace_id: str) -> dict | None:
        return _read_entry(os.path.join(self._entry_dir(key), _check_name("trace id", trace_id) + ".json"))

    def _ref_path(self, name: str) -> str:
        _check_name("ref name", name)
        return os.path.join(str(self.root), "refs", name[:2], name + ".json")

    def get_ref(self, name: str) -> dict | None:
        return _read_entry(self._ref_path(name))

    def put_ref(self, name: str, value: dict) -> None:
        atomic_write_json(self._ref_path(name), value)

    def put_entry(self, key: str, entry: dict) -> None:
        name = _check_name("trace id", entry["trace_id"])
        atomic_write_json(os.path.join(self._entry_dir(key), name + ".json"), entry)  # makes the dir

    def delete_entry(self, key: str, trace_id: str) -> None:
        path = os.path.join(self._entry_dir(key), _check_name("trace id", trace_id) + ".json")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def iter_entries(self) -> Iterator[tuple[str, dict]]:
        for shard in _listdir(self._entries):
            for key in _listdir(os.path.join(self._entries, shard)):
                if _NAME_RE.match(key):
                    for entry in self.get_entries(key):
                        yield key, entry

    # -- locks, staging ------------------------------------------------------------------------
    def lock(self, key: str) -> NodeLock:
        _check_name("node key", key)
        lock_dir = self._ensure_dir(os.path.join(self._locks, key[:2]))  # re-created by the lock if gone
        return _FileNodeLock(os.path.join(lock_dir, key + ".lock"))

    def new_staging_dir(self, prefix: str = "") -> Path:
        return Path(self._in_dir(self._tmp, tempfile.mkdtemp, "", prefix, self._tmp))

    def prune_locks(self, before: float) -> int:
        """A lock file is unlinked only while we hold its flock, and only for a node that already has
        an entry (only --overwrite would compute it again): the worst a race can cost is that two
        processes recompute that node at the same time, each storing a correct entry."""
        import fcntl

        removed = 0
        for shard in _listdir(self._locks):
            shard_dir = os.path.join(self._locks, shard)
            for name in _listdir(shard_dir):
                path = os.path.join(shard_dir, name)
                key = name.split(".", 1)[0]
                st = _lstat_or_none(path)
                if st is None or st.st_mtime >= before or not _NAME_RE.match(key) or not _listdir(self._entry_dir(key)):
                    continue
                fd = os.open(path, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    os.unlink(path)
                    removed += 1
                finally:
                    os.close(fd)
        return removed

    def _tmp_root(self) -> str:
        return self._ensure_dir(self._tmp)


def _check_root(root: Path) -> None:
    """Fail early, with what to do, on a cache path that cannot work; create nothing."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return  # created at the first write
    except NotADirectoryError:
        st = None
    except PermissionError as e:
        raise StoreError(f"cache directory {root} is not accessible ({e}): fix the permissions of its "
                         "parents or choose another cache with --cache DIR or ORCH_CACHE") from e
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cache directory {root} is not a directory: remove it or choose another "
                         "cache with --cache DIR or ORCH_CACHE")
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreError(f"cache directory {root} is not writable: fix its permissions or choose "
                         "another cache with --cache DIR or ORCH_CACHE")


def _tree_size(root: str) -> int:
    """Sum of the regular files' sizes, as hashing.hash_path counts it (links and dirs count 0)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _looks_intact(st: os.stat_result, info: ObjectInfo) -> bool:
    """The cheap check at lookup: right kind and, for a file, right size (a tree's size would need a walk)."""
    if info.kind == "dir":
        return stat.S_ISDIR(st.st_mode)
    return stat.S_ISREG(st.st_mode) and st.st_size == info.size


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def _read_entry(path: str) -> dict | None:
    """One entry file, or None (with a warning) if it cannot be used: a bad entry is a cache miss."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None  # deleted since the listing (delete_entry, gc): not damage
    except OSError as e:
        log.warning("skipping unreadable cache entry %s: %s", path, e)
        return None
    try:
        entry = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        log.warning("skipping corrupt cache entry %s: %s", path, e)
        return None
    if not isinstance(entry, dict):
        log.warning("skipping corrupt cache entry %s: not a JSON object", path)
        return None
    return entry


class MemoryStore(Store):
    """In-memory twin for fast planner/runner tests. Entries are kept as JSON text (so they round-trip
    like on disk); objects as bytes (files) or {relpath: (kind, data)} (dirs; kind is file, exec,
    dir or link), materialized read-only in a private temp dir when object_path is asked."""

    def __init__(self) -> None:
        self.root = None
        self._objects: dict[tuple[str, str], tuple[ObjectInfo, object]] = {}
        self._entries: dict[str, dict[str, str]] = {}
        self._refs: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tmpdir: str | None = None

    def _private_dir(self) -> str:
        with self._guard:
            if self._tmpdir is None:
                self._tmpdir = tempfile.mkdtemp(prefix="orch-memstore-")
                weakref.finalize(self, rmtree_force, self._tmpdir, missing_ok=True)
            return self._tmpdir

    def _object_file(self, info: ObjectInfo) -> str:
        _check_info(info)
        return os.path.join(self._private_dir(), "objects", info.hash[:2], info.hash[2:] + info.ext)

    def ingest(self, path: Path, ext: str = "") -> ObjectInfo:
        src = os.fspath(path)
        kind, digest, size = hashing.hash_path(src)
        info = ObjectInfo(digest, size, kind, ext)
        _check_info(info)
        content = _read_file(src) if kind == "file" else _read_tree(src)
        rmtree_force(src)
        self._objects.setdefault((digest, ext), (info, content))
        return info

    def has_object(self, info: ObjectInfo) -> bool:
        stored = self._objects.get((info.hash, info.ext))
        return stored is not None and stored[0].kind == info.kind and stored[0].size == info.size

    def object_path(self, info: ObjectInfo, verify: bool = True) -> Path:
        path = self._object_file(info)
        stored = self._objects.get((info.hash, info.ext))
        if stored is not None and not os.path.lexists(path):
            _materialize(path, stored[1])
        if verify:
            self._verify(info, path)
        return Path(path)

    def _quarantine(self, info: ObjectInfo, path: str) -> str:
        self._objects.pop((info.hash, info.ext), None)
        rmtree_force(path, missing_ok=True)
        return "(discarded: in-memory store)"

    def delete_object(self, info: ObjectInfo) -> None:
        self._objects.pop((info.hash, info.ext), None)
        path = self._object_file(info)
        self._verified.pop(path, None)
        rmtree_force(path, missing_ok=True)

    def iter_objects(self) -> Iterator[ObjectInfo]:
        return iter([info for info, _ in list(self._objects.values())])

    def get_entries(self, key: str) -> list[dict]:
        texts = list(self._entries.get(_check_name("node key", key), {}).values())
        return sorted((json.loads(t) for t in texts), key=_created, reverse=True)

    def get_entry(self, key: str, trace_id: str) -> dict | None:
        text = self._entries.get(_check_name("node key", key), {}).get(_check_name("trace id", trace_id))
        return None if text is None else json.loads(text)

    def get_ref(self, name: str) -> dict | None:
        text = self._refs.get(_check_name("ref name", name))
        return None if text is None else json.loads(text)

    def put_ref(self, name: str, value: dict) -> None:
        self._refs[_check_name("ref name", name)] = json.dumps(value, separators=(",", ":"))

    def put_entry(self, key: str, entry: dict) -> None:
        name = _check_name("trace id", entry["trace_id"])
        text = json.dumps(entry, separators=(",", ":"))  # fails like the disk store on bad values
        self._entries.setdefault(_check_name("node key", key), {})[name] = text

    def delete_entry(self, key: str, trace_id: str) -> None:
        self._entries.get(_check_name("node key", key), {}).pop(_check_name("trace id", trace_id), None)

    def iter_entries(self) -> Iterator[tuple[str, dict]]:
        for key in sorted(self._entries):
            for entry in self.get_entries(key):
                yield key, entry

    def lock(self, key: str) -> NodeLock:
        with self._guard:
            return _ThreadNodeLock(self._locks.setdefault(_check_name("node key", key), threading.Lock()))

    def new_staging_dir(self, prefix: str = "") -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self._tmp_root()))

    def _tmp_root(self) -> str:
        tmp = os.path.join(self._private_dir(), "tmp")
        os.makedirs(tmp, exist_ok=True)
        return tmp


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_tree(root: str) -> dict[str, tuple[str, bytes | str]]:
    """{relpath: (kind, data)}: everything hash_dir looks at (exec bits, links, empty dirs)."""
    tree: dict[str, tuple[str, bytes | str]] = {}
    todo = [(root, "")]
    while todo:
        directory, rel_dir = todo.pop()
        with os.scandir(directory) as it:
            for e in it:
                rel = rel_dir + e.name
                if e.is_symlink():
                    tree[rel] = ("link", os.readlink(e.path))
                elif e.is_dir(follow_symlinks=False):
                    tree[rel] = ("dir", b"")
                    todo.append((e.path, rel + "/"))
                else:
                    executable = e.stat(follow_symlinks=False).st_mode & stat.S_IXUSR
                    tree[rel] = ("exec" if executable else "file", _read_file(e.path))
    return tree


def _materialize(path: str, content: bytes | dict) -> None:
    """Write an object into the private dir under a temp name, seal it, rename it into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(content, bytes):
        atomic_write_bytes(path, content)
        make_readonly(path)
        return
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".materialize-")
    for rel, (kind, data) in sorted(content.items()):  # parents sort before their children
        dest = os.path.join(tmp, *rel.split("/"))
        if kind == "dir":
            os.makedirs(dest, exist_ok=True)
        elif kind == "link":
            os.symlink(data, dest)
        else:
            with open(dest, "wb") as f:
                f.write(data)
            os.chmod(dest, 0o755 if kind == "exec" else 0o644)
    make_readonly(tmp, skip_top=True)
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        rmtree_force(tmp)  # another thread materialized it first
        return
    os.chmod(path, 0o555)
