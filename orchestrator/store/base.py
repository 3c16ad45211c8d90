"""The store interface: what the planner and runner code against, and the pieces every
implementation shares (object descriptions, name checks, node locks within a process, verification).

Objects are files or directory trees named by their content hash, moved in by rename and read-only
once there, so identical artifacts are stored once and a stored object never changes under a reader.
Entries are written atomically, one file each: no shared file is ever rewritten, so any number of
processes (local workers, MPI ranks on a shared filesystem) can use one cache. A per-node lock makes
two processes that need the same node compute it once.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .. import hashing
from ..errors import DamagedObjectError

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


