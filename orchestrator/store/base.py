"""The store interface: what the planner, the runner and the executors code against, and what every
implementation shares (entry parsing with its warnings, verification of objects).

Objects are files or directory trees named by their content hash, moved in by rename and read-only
once there, so identical artifacts are stored once and a stored object never changes under a reader.
Entries are written atomically, one file each: no shared file is ever rewritten, so any number of
processes (local workers, MPI ranks on a shared filesystem) can use one cache. A per-node lock makes
two processes that need the same node compute it once.
"""

from __future__ import annotations

import abc
import json
import os

from .. import hashing
from ..errors import DamagedObjectError
from ..fsutil import LazyLogger, unique_suffix
from .entries import CodeManifest, Entry, EntryError, Head, ObjectInfo, check_name
from .locks import NodeLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Iterator

    from ..hashing import StatCache

log = LazyLogger("orchestrator.store")
#: characters of a malformed record's reason a warning shows
MAX_REASON = 300

#: Object path -> stat signature when its content last matched its hash. One per process, shared
#: by every store instance on purpose: `orchestrator.load` opens a store per call, and a notebook
#: loading a 2 GB model ten times must hash it once, not ten times.
VERIFIED_OBJECTS: dict[str, tuple] = {}


class Store(abc.ABC):
    """Objects by content hash, entries by node key and trace id, heads by name, locks by scope."""

    root: Path | None = None
    #: the same directory as a string (what a run uses: it does not import pathlib); None: no directory
    directory: str | None = None

    def __init__(self) -> None:
        self._verified = VERIFIED_OBJECTS  # re-hashed once per process, and again only if its file changes
        self._warned: set[str] = set()  # records already warned about: one warning each
        #: read signature -> the (parameter paths, file names) it is the hash of (keys.trace_signature),
        #: learned by the re-check under a node lock (executors.task): a pure function, never stale
        self.read_signatures: dict[str, tuple[tuple, tuple]] = {}
        #: the checkpoint directories' root was seen to exist (executors.task looks for a node's then)
        self.checkpoints_seen = False

    # -- objects ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def ingest(self, path: str | os.PathLike, ext: str = "") -> ObjectInfo:
        """Move the file or directory at `path` into the store under its content hash (`path` is
        consumed); an object already stored is kept and the new copy discarded. Read-only once in."""

    def ingest_bytes(self, data: bytes, ext: str = "") -> ObjectInfo:
        """ingest of a file holding `data`: the same object (hash, size, name, permissions) without
        the file (a cacher that made the bytes in memory, cachers.Cacher.prepare_in_memory)."""
        path = f"{self._staging_name('bytes')}{ext}"
        with open(path, "xb") as f:
            f.write(data)
        return self.ingest(path, ext)

    @abc.abstractmethod
    def has_object(self, info: ObjectInfo) -> bool:
        """Cheap validation at lookup: exists and (files) size matches. No hashing."""

    @abc.abstractmethod
    def object_path(self, info: ObjectInfo, verify: bool = True) -> Path:
        """A path to read the object from. With verify, the content is re-hashed once per process per
        (path, size, mtime_ns, inode); a missing or damaged object raises DamagedObjectError and a
        damaged one is moved into quarantine so that re-running its producer stores a good copy."""

    def missing_outputs(self, entry: Entry) -> list[str]:
        """The names of `entry`'s outputs whose objects fail the cheap check of has_object."""
        return [name for name, out in entry.outputs.items() if not self.has_object(out.object)]

    @abc.abstractmethod
    def delete_object(self, info: ObjectInfo) -> None:
        """Remove an object (for `orch cache gc`); absent is fine."""

    @abc.abstractmethod
    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Every stored object, with its actual size and kind as found (for `orch cache ls/gc/verify`)."""

    # -- entries and heads -----------------------------------------------------------------------
    @abc.abstractmethod
    def get_entry(self, key: str, trace_id: str, *, label: str = "") -> Entry | None:
        """One entry by name, or None: the fast path of a lookup whose trace id is predicted.
        A malformed entry is None too, after one warning naming `label` (the node asking)."""

    @abc.abstractmethod
    def get_entries(self, key: str, *, label: str = "") -> list[Entry]:
        """Every valid entry under a node key, newest first; malformed ones are skipped with one
        warning each (a damaged entry is a cache miss, never an exception)."""

    def trace_ids(self, key: str) -> list[str]:
        """The trace ids of the entries stored under `key`, in no order: their names, nothing read."""
        return [entry.trace_id for entry in self.get_entries(key)]

    @abc.abstractmethod
    def put_entry(self, entry: Entry) -> None:
        """Store `entry` under (entry.key, entry.trace_id) atomically; the same pair overwrites."""

    @abc.abstractmethod
    def delete_entry(self, key: str, trace_id: str) -> None:
        """Remove one entry; absent is fine."""

    @abc.abstractmethod
    def iter_entries(self) -> Iterator[Entry]:
        """Every valid entry in the store (malformed ones skipped with a warning)."""

    @abc.abstractmethod
    def get_head(self, name: str, *, label: str = "") -> Head | None:
        """The head record `name` (the last key of a stage on a parameter set), or None."""

    @abc.abstractmethod
    def put_head(self, name: str, head: Head) -> None:
        """Write a head atomically, last writer wins (one flat file: no directory per name)."""

    def put_entry_and_head(self, entry: Entry, head_name: str) -> tuple | None:
        """put_entry, then the head `head_name` (the last key of the entry's stage on its parameter
        set) naming it: what a node that ran stores. Returns what an entry index needs to keep the
        entry, so that the next planning need not read it back (DiskStore: its file's stat
        signature, see store.entryindex), or None."""
        self.put_entry(entry)
        self.put_head(head_name, Head(entry.key, entry.created, entry.components, entry.trace_id))
        return None

    def learn_written(self, entry: Entry, sig: tuple) -> None:
        """Keep `entry` in the entry index this store plans with, if it has one; `sig` is what
        put_entry_and_head returned for it (maybe in another process: a pool worker, an MPI rank)."""

    @abc.abstractmethod
    def get_code_manifest(self, digest: str) -> CodeManifest | None:
        """What the code fingerprint `digest` was made of, if a run recorded it."""

    @abc.abstractmethod
    def put_code_manifests(self, manifests: dict[str, CodeManifest]) -> None:
        """Record what code fingerprints are made of (same digest, same content), in one write."""

    # -- locks and working areas -----------------------------------------------------------------
    @abc.abstractmethod
    def lock(self, name: str) -> NodeLock:
        """An exclusive lock for computing the node whose lock scope is `name` (threads, processes)."""

    def prune_locks(self, before: float) -> int:
        """Remove lock files made before `before` (epoch seconds) of nodes that have an entry and
        that nobody holds now; how many. (The in-memory twin has nothing to prune.)"""
        return 0

    def new_staging_path(self, prefix: str = "") -> Path:
        """A fresh, unique path in the staging area on the objects' filesystem, *not created*: a
        stage that never asks for a staging directory costs no mkdir/rmdir (slow on some disks)."""
        from pathlib import Path  # (a node that runs: pathlib is not on the cached path)

        return Path(self._staging_name(prefix))

    def _staging_name(self, prefix: str = "") -> str:
        """new_staging_path as a string (a node that runs makes one: no Path object needed)."""
        return f"{self._tmp_root()}/{prefix}-{unique_suffix()}"

    @abc.abstractmethod
    def new_staging_dir(self, prefix: str = "") -> Path:
        """A fresh empty directory on the objects' filesystem, so that ingest is a rename."""

    def checkpoint_dir(self, name: str) -> Path:
        """A node's checkpoint directory (record.checkpoint_dir; not created): unlike staging, it
        survives a failed or killed run so a long stage can resume; removed once the node succeeded.
        On disk under scratch/ (the name orch 0.1.0 gave it, kept so no checkpoint is lost)."""
        from pathlib import Path

        return Path(self._checkpoint_name(name))

    def _checkpoint_name(self, name: str) -> str:
        """checkpoint_dir as a string."""
        return f"{self._checkpoint_root()}/{check_name('checkpoint directory name', name)}"

    def _checkpoint_root(self) -> str:
        """The directory every checkpoint directory is in (not created)."""
        return f"{os.path.dirname(self._tmp_root())}/scratch"  # an absolute, normalized directory: joined by hand

    def check_locking(self) -> None:
        """Raise LockingUnsupportedError when node locks cannot work here (DiskStore: no flock)."""

    def stat_cache(self) -> StatCache | None:
        """The stat cache persisted with this store (unchanged tracked files are not re-hashed), or
        None for a store that has no directory of its own."""
        return None

    @abc.abstractmethod
    def _tmp_root(self) -> str:
        """The existing directory staging paths live in."""

    @abc.abstractmethod
    def _quarantine(self, info: ObjectInfo, path: str) -> str:
        """Move a damaged object out of the way; return where it went."""

    # -- shared by the implementations -----------------------------------------------------------
    def _parse_entry(self, data: bytes | str, where: str, key: str, trace_id: str | None,
                     label: str = "") -> Entry | None:
        """The entry in `data`, or None after one warning: the entry must parse, be valid (see
        store.entries) and be the one asked for (its key and trace id match where it was found)."""
        try:
            entry = Entry.from_json(json.loads(data))
            if entry.key != key or (trace_id is not None and entry.trace_id != trace_id):
                raise EntryError(f"it belongs to key {entry.key}, trace {entry.trace_id} (copied or moved?)")
        except (ValueError, RecursionError) as e:  # EntryError, JSONDecodeError, UnicodeDecodeError
            self._warn_malformed("cache entry", where, data, label, e)
            return None
        return entry

    def _parse_head(self, data: bytes | str, where: str, label: str = "") -> Head | None:
        try:
            return Head.from_json(json.loads(data))
        except (ValueError, RecursionError) as e:
            self._warn_malformed("head record", where, data, label, e)
            return None

    def _parse_code_manifest(self, data: bytes | str, where: str) -> CodeManifest | None:
        try:
            return CodeManifest.from_json(json.loads(data))
        except (ValueError, RecursionError) as e:
            self._warn_malformed("code manifest", where, data, "", e)
            return None

    def first_warning(self, about: str) -> bool:
        """True the first time this store is asked about `about` (a damaged record's name): one
        warning per record, however many lookups meet it."""
        if about in self._warned:
            return False
        self._warned.add(about)
        return True

    def _warn_malformed(self, what: str, where: str, data: bytes | str, label: str, error: Exception) -> None:
        if not self.first_warning(where):
            return
        stage = label or _stage_named_in(data) or "an unknown stage"
        reason = "empty file" if not data else str(error)
        if len(reason) > MAX_REASON:  # (a damaged field's value can be megabytes)
            reason = f"{reason[:MAX_REASON]}... ({len(reason):,} characters)"
        log.warning("ignoring malformed %s of %s (%s): %s; treated as a cache miss", what, stage, where, reason)

    def _verify(self, info: ObjectInfo, path: str) -> None:
        """Re-hash `path` unless it was verified unchanged before; quarantine on mismatch."""
        try:
            sig = hashing.stat_signature(path, info.kind)
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


def _stage_named_in(data: bytes | str) -> str:
    """The stage a damaged record says it belongs to, if that much of it can still be read."""
    try:
        stage = json.loads(data).get("stage")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return f"stage {stage}" if isinstance(stage, str) else ""
