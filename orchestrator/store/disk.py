"""DiskStore: the store on a (possibly shared) filesystem, with node locks the kernel keeps (store.bytelocks)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time

from .. import hashing
from ..errors import StoreError
from ..fsutil import (
    LazyLogger,
    atomic_write_bytes,
    load_cache_file,
    make_dirs,
    make_readonly,
    make_writable_dir,
    readonly_mode,
    rmtree_force,
    save_cache_file,
    temp_name,
    unique_suffix,
    write_all,
)
from . import entryindex, sharing
from .base import Store
from .bytelocks import NODES, PosixRangeNodeLock, RangeNodeLock, lock_kind
from .entries import FORMAT, CodeManifest, Entry, EntryError, Head, ObjectInfo, check_name, check_object
from .failures import is_write_failure, write_error
from .locks import FileNodeLock, NodeLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Iterator

log = LazyLogger("orchestrator.store")
#: How many code fingerprints' manifests the cache keeps (the newest; each a few KB at most).
CODE_MANIFESTS_KEPT = 5000
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # what check_name accepts
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_READ_SIZE = 1 << 16
#: A damaged directory object another user owns, set aside inside its shard (see _quarantine).
DAMAGED_PREFIX = ".damaged-"
#: What link(2) fails with where hard links are not supported (or the entry was removed meanwhile).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK,
                            errno.ENOENT})
#: json.dumps(obj, separators=(",", ":")) without making an encoder per call (one per written entry)
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_OBJECT_NAME_RE = re.compile(r"([0-9a-f]{62})((?:\.[A-Za-z0-9_-]+)*)\Z")  # a name inside objects/ab/


class DiskStore(Store):
    """The store on a (possibly shared) filesystem. Layout under root:
    objects/ab/<hash[2:]><ext>, entries/ab/<key>/<trace_id>.json, locks/nodes.lock (node locks are
    bytes of it; locks/ab/<name>.lock on a filesystem with flock only, and from orch before 0.2),
    tmp/ (staging, same filesystem as objects), quarantine/ (damaged objects, for inspection)."""

    def __init__(self, root: Path | str, *, write: bool = True):
        """`write=False` opens a cache that may be read-only for this user (`orch get`, `cache ls`,
        `orchestrator.load`, a run that finds everything cached): `read_only` says whether it is,
        and a write that is refused fails with CacheWriteError instead of at opening."""
        super().__init__()
        self.directory = r = os.path.abspath(root)  # a string: a run does not import pathlib (store.location)
        self._root_path: Path | None = None
        self.read_only = _check_root(r, write)
        if not self.read_only:
            sharing.apply_group_policy(r)
        self._objects, self._entries = os.path.join(r, "objects"), os.path.join(r, "entries")
        self._locks, self._tmp = os.path.join(r, "locks"), os.path.join(r, "tmp")
        self._refs = os.path.join(r, "refs")
        self._quarantine_dir = os.path.join(r, "quarantine")
        self._made: set[str] = set()  # directories known to exist: no mkdir syscall per write
        self._stat_cache: hashing.StatCache | None = None
        self._code_path = os.path.join(r, "code-manifests.json")
        self._manifests: dict | None = None  # loaded when a code change is explained
        self._index = None  # an EntryIndex once use_entry_index is called (planning of an experiment)
        # The last key get_entries found no directory for: a node's re-check under its lock, just before
        # its put_entry, which then makes the directory first instead of failing to open a file in it.
        self._dirless_key: str | None = None
        self._nodes_file = os.path.join(self._locks, NODES)  # node locks are bytes of it (store.bytelocks)
        self._lock_kind: str | None = None  # how they are taken here (bytelocks.lock_kind; at the first lock)

    @property
    def root(self) -> Path:
        """The cache directory (absolute)."""
        if self._root_path is None:
            from pathlib import Path

            self._root_path = Path(self.directory)
        return self._root_path

    def _ensure_dir(self, d: str) -> str:
        if d not in self._made:
            try:
                try:
                    os.mkdir(d)  # its parent usually exists: one syscall (os.makedirs stats parents first)
                except FileNotFoundError:
                    os.makedirs(d, exist_ok=True)
                except FileExistsError:
                    if not os.path.isdir(d):
                        raise
            except (FileExistsError, NotADirectoryError) as e:
                raise StoreError(f"cannot create {d} in the cache {self.directory}: {e}; remove what is in the way "
                                 "or choose another cache (--cache DIR / ORCH_CACHE)") from e
            except OSError as e:
                if not is_write_failure(e):
                    raise
                raise write_error(e, f"creating the directory {d}", self.directory, d) from e
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

    # Paths are joined by hand below (the parts are checked single components, the roots absolute):
    # every cached node builds two of them, and os.path.join costs as much as opening the file.
    def _object_file(self, info: ObjectInfo) -> str:
        check_object(info)
        h = info.hash
        return f"{self._objects}/{h[:2]}/{h[2:]}{info.ext}"

    def _entry_dir(self, key: str) -> str:
        check_name("node key", key)
        return f"{self._entries}/{key[:2]}/{key}"

    # -- objects -------------------------------------------------------------------------------
    def ingest(self, path: Path, ext: str = "") -> ObjectInfo:
        src = os.fspath(path)
        first = os.lstat(src)
        if stat.S_ISREG(first.st_mode):
            placed = self._ingest_file(src, first, ext)
            if placed is not None:
                return placed
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
            sig = hashing.stat_signature(target, kind)  # rename keeps inode and mtime
            if sig == (before.st_size, before.st_mtime_ns, before.st_ino):
                self._verified[target] = sig  # hashed just now and unchanged since: no re-hash on load
        return info

    def _ingest_file(self, src: str, before: os.stat_result, ext: str) -> ObjectInfo | None:
        """The common case of ingest, a regular file (what every cacher writes), in as few syscalls
        as it takes: ingest's lstat is the one stat of `src` (a regular file: no link to follow, no
        tree to walk), and the hash's own fstat after reading tells whether it changed meanwhile
        (the rename keeps size, mtime and inode, so the object needs no stat after it). None: take
        the general path (a rename across filesystems, or a file that changed while it was hashed)."""
        digest, sig = hashing.hash_file_signed(src, before.st_size)
        if sig != (before.st_size, before.st_mtime_ns, before.st_ino):
            return None  # still being written: the digest may not be of `before.st_size` bytes
        info = ObjectInfo(digest, before.st_size, "file", ext)
        target = self._object_file(info)
        st = _lstat_or_none(target)
        if st is not None:
            if _looks_intact(st, info):
                os.unlink(src)  # identical content already stored: keep the copy readers may use
                return info
            self._quarantine(info, target)  # wrong size or kind: a damaged copy must not block a good one
        os.chmod(src, readonly_mode(before.st_mode))  # make_readonly of a regular file, its lstat known
        try:
            self._in_dir(os.path.dirname(target), os.replace, src, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return None  # on another filesystem (e.g. /tmp): _move_in copies it next to the objects
        self._verified[target] = sig  # hashed just now and unchanged since: no re-hash on load
        return info

    def ingest_bytes(self, data: bytes, ext: str = "") -> ObjectInfo:
        """The bytes hashed in memory; an intact object already stored costs one lstat, a new one
        is written under a temp name in tmp/ and renamed into place, 0o444 as ingest makes it."""
        info = ObjectInfo(hashing.hash_bytes(data), len(data), "file", ext)
        target = self._object_file(info)
        st = _lstat_or_none(target)
        if st is not None:
            if _looks_intact(st, info):
                return info
            self._quarantine(info, target)  # wrong size or kind: a damaged copy must not block a good one
        tmp = f"{self._tmp}/.object.{unique_suffix()}.tmp"
        # Created writable, made read-only before it is renamed into place: some network filesystems
        # refuse writes into a file created read-only, even through the descriptor that created it.
        fd = self._in_dir(self._tmp, os.open, tmp, _O_CREATE, 0o600)
        try:
            try:
                write_all(fd, data)
                os.fchmod(fd, 0o444)
                st = os.fstat(fd)
            except OSError as e:  # os.write's errors name no file: say which (a full disk's message)
                if e.filename is None:
                    e.filename = tmp
                raise
            finally:
                os.close(fd)
            self._in_dir(os.path.dirname(target), os.replace, tmp, target)  # a concurrent identical copy is replaced
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._verified[target] = (st.st_size, st.st_mtime_ns, st.st_ino)  # written and hashed just now
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
        import shutil

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

    def missing_outputs(self, entry: Entry) -> list[str]:
        """has_object of each output, inlined (every cached node's lookup ends here). The object's
        name is not validated again: entries are checked when parsed, and an lstat reads nothing."""
        missing = []
        objects = self._objects
        for name, out in entry.outputs.items():
            info = out.object
            h = info.hash
            try:
                st = os.lstat(f"{objects}/{h[:2]}/{h[2:]}{info.ext}")
            except FileNotFoundError:
                missing.append(name)
                continue
            if not _looks_intact(st, info):
                missing.append(name)
        return missing

    def object_path(self, info: ObjectInfo, verify: bool = True) -> Path:
        path = self._object_file(info)
        if verify:
            self._verify(info, path)
        from pathlib import Path  # (a node that loads an input: pathlib is not on the cached path)

        return Path(path)

    def _quarantine(self, info: ObjectInfo, path: str) -> str:
        """Move a damaged object out of its name, so its producer can store a good copy there.

        A directory object owned by another member of a team cache cannot move to quarantine/: moving
        a directory into another parent rewrites its `..`, which needs write on the directory itself,
        and only its owner may grant that. It is then renamed within its shard instead (which needs
        write on the shard only, as any store does), to a name no lookup or listing matches, kept for
        inspection like quarantine/."""
        tag = f"{info.hash}{info.ext}.{os.getpid()}.{os.urandom(4).hex()}"
        dest = os.path.join(self._ensure_dir(self._quarantine_dir), tag)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                try:
                    make_writable_dir(path)  # renaming a directory into another parent needs write on it
                except PermissionError:
                    dest = os.path.join(os.path.dirname(path), DAMAGED_PREFIX + tag)
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

    # -- entries and heads -----------------------------------------------------------------------
    def _entry_file(self, key: str, trace_id: str) -> str:
        check_name("trace id", trace_id)
        return f"{self._entry_dir(key)}/{trace_id}.json"

    def get_entry(self, key: str, trace_id: str, *, label: str = "") -> Entry | None:
        return self._load_entry(self._entry_file(key, trace_id), key, trace_id, label)

    def _load_entry(self, path: str, key: str, trace_id: str, label: str) -> Entry | None:
        index = self._index
        if index is None:
            data = self._read(path)
            return None if data is None else self._parse_entry(data, path, key, trace_id, label)
        name = f"{key}/{trace_id}"
        found = index.get(name, path)
        if found is not False:
            return found
        read = self._read(path, with_stat=True)
        if read is None:
            return None
        entry = self._parse_entry(read[0], path, key, trace_id, label)
        if entry is not None:
            index.learn(name, read[1], entry)
        return entry

    def use_entry_index(self, name: str) -> None:
        """Serve entries through the index `name` (store.entryindex: one per experiment) from now on."""
        check_name("entry index name", name)
        self._index = entryindex.EntryIndex(os.path.join(self.directory, "index", name + ".idx"), self._entries,
                                            writable=not self.read_only)

    def planning_hints(self) -> dict[str, dict[str, tuple]]:
        """The planner's hints kept in the entry index (store.entryindex), {} without one."""
        return self._index.hints() if self._index is not None else {}

    def save_entry_index(self, hints: dict[str, dict[str, tuple]] | None = None) -> None:
        """Write the entry index if it learned something, with the planner's `hints` for next time."""
        if self._index is not None:
            if hints is not None:
                self._index.keep_hints(hints)
            self._index.save()

    def learn_written(self, entry: Entry, sig: tuple) -> None:
        if self._index is not None:
            self._index.learn_written(f"{entry.key}/{entry.trace_id}", sig, entry)

    def get_entries(self, key: str, *, label: str = "") -> list[Entry]:
        d = self._entry_dir(key)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            self._dirless_key = key
            return []
        entries = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):  # ".x.tmp": writes in progress
                entry = self._load_entry(os.path.join(d, name), key, name[:-5], label)
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=lambda e: e.created, reverse=True)
        return entries

    def trace_ids(self, key: str) -> list[str]:
        try:
            names = os.listdir(self._entry_dir(key))
        except FileNotFoundError:
            self._dirless_key = key
            return []
        return [name[:-5] for name in names  # ".x.tmp": writes in progress; a name no entry can have: skipped
                if name.endswith(".json") and not name.startswith(".") and _NAME_RE.match(name)]

    def put_entry(self, entry: Entry) -> None:
        self._put_entry(entry)

    def _put_entry(self, entry: Entry) -> os.stat_result:
        """put_entry; returns the written file's fstat (fsutil.atomic_write_bytes)."""
        data = _COMPACT.encode(entry.to_json()).encode()  # before any file exists
        path = self._entry_file(entry.key, entry.trace_id)
        if entry.key == self._dirless_key:  # seen missing just now: make it rather than fail an open first
            self._dirless_key = None
            make_dirs(os.path.dirname(path))  # made meanwhile by another process: EEXIST, fine
        return atomic_write_bytes(path, data)  # makes the dir if it is missing

    def delete_entry(self, key: str, trace_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._entry_file(key, trace_id))

    def iter_entries(self) -> Iterator[Entry]:
        for shard in _listdir(self._entries):
            for key in _listdir(os.path.join(self._entries, shard)):
                if _NAME_RE.match(key):
                    yield from self.get_entries(key)

    def _head_file(self, name: str) -> str:
        check_name("head name", name)
        return f"{self._refs}/{name[:2]}/{name}.json"

    def get_head(self, name: str, *, label: str = "") -> Head | None:
        path = self._head_file(name)
        data = self._read(path)
        return None if data is None else self._parse_head(data, path, label)

    def put_head(self, name: str, head: Head) -> None:
        atomic_write_bytes(self._head_file(name), _COMPACT.encode(head.to_json()).encode())

    def put_entry_and_head(self, entry: Entry, head_name: str) -> tuple | None:
        """put_entry and the head (see _link_head); returns, for the entry index (store.entryindex),
        the stat signature its file has now, after the head's link (the last change this writer makes
        to it), only while the file at its path is still the one written here: another writer of the
        same key and trace may have replaced it, so its device, inode, size and mtime are compared
        with the file written (the rename and the link leave them as they were)."""
        written = self._put_entry(entry)
        self._link_head(entry, head_name)
        try:
            st = os.stat(self._entry_file(entry.key, entry.trace_id))
        except OSError:
            return None
        if (st.st_ino != written.st_ino or st.st_dev != written.st_dev or st.st_size != written.st_size
                or st.st_mtime_ns != written.st_mtime_ns):
            return None
        return entryindex.signature(st)

    def _link_head(self, entry: Entry, head_name: str) -> None:
        """The head is a hard link to the entry file just written: an entry is a valid head record
        (Head.from_json reads its format, key, created, components and trace_id, all equal to the
        head's, and nothing else), so the head costs a link (and a rename when it replaces another)
        instead of a new file (an inode: the slowest part of creating a record). Both names are only
        ever created by link or replaced by rename, never written in place, so the shared inode never
        changes. Where hard links are refused
        (some network and FUSE filesystems) the head is written as before."""
        head = Head(entry.key, entry.created, entry.components, entry.trace_id)
        source, path = self._entry_file(entry.key, entry.trace_id), self._head_file(head_name)
        try:  # no head yet (a new parameter set, a first run): linked straight into place
            try:
                os.link(source, path)
            except FileNotFoundError:  # refs/ab/ not made yet (or removed): make it, once more
                make_dirs(os.path.dirname(path))
                os.link(source, path)
            return
        except FileExistsError:
            pass  # replaced through a temp name, below
        except OSError as e:  # ENOENT: the entry removed meanwhile (gc): write the head
            if e.errno not in _NO_HARD_LINKS:
                raise
            self.put_head(head_name, head)
            return
        tmp = temp_name(path)
        try:
            try:
                os.link(source, tmp)
            except FileNotFoundError:  # refs/ab/ not made yet (or removed): make it, once more
                make_dirs(os.path.dirname(tmp))
                os.link(source, tmp)
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:  # ENOENT: the entry removed meanwhile (gc): write the head
                raise
            self.put_head(head_name, head)
            return
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get_code_manifest(self, digest: str) -> CodeManifest | None:
        found = self._code_manifests().get(digest)
        if found is None:
            return None
        try:
            return CodeManifest.from_json(found)
        except EntryError as e:
            self._warn_malformed("code manifest", f"{self._code_path}#{digest}", "", "", e)
            return None

    def put_code_manifests(self, manifests: dict[str, CodeManifest]) -> None:
        """One file for every fingerprint: a first run of 200 distinct stages writes it once, not 200
        files. Merged with what is on disk (several writers lose at most an explanation's detail,
        never a result) and kept to the newest CODE_MANIFESTS_KEPT."""
        known = self._code_manifests()
        new = {d: m.to_json() | {"seen": time.time()} for d, m in manifests.items() if d not in known}
        if not new:
            return
        merged = {**load_cache_file(self._code_path, FORMAT, "manifests"), **new}
        if len(merged) > CODE_MANIFESTS_KEPT:
            newest = sorted(merged.items(), key=_seen)
            merged = dict(newest[-CODE_MANIFESTS_KEPT:])
        if save_cache_file(self._code_path, {"version": FORMAT, "manifests": merged}):
            self._manifests = merged

    def _code_manifests(self) -> dict:
        if self._manifests is None:
            self._manifests = load_cache_file(self._code_path, FORMAT, "manifests")
        return self._manifests

    def _read(self, path: str, with_stat: bool = False):
        """A record's bytes (with_stat: and the file's fstat after reading them), or None when it is
        absent (deleted since a listing is not damage) or unreadable (warned once: a record that
        cannot be read is a miss)."""
        try:  # os.open/os.read: a third of the instructions of open() + read() per cached node
            fd = os.open(path, _O_READ)
            try:
                data = os.read(fd, _READ_SIZE)  # an entry is a few KB: one read, then EOF
                while chunk := os.read(fd, _READ_SIZE):  # until EOF: a short read is not the end
                    data += chunk
                if with_stat:
                    return data, os.fstat(fd)
            finally:
                os.close(fd)
            return data
        except FileNotFoundError:
            return None
        except OSError as e:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping unreadable cache record %s: %s; treated as a cache miss", path, e)
            return None

    # -- locks, staging ------------------------------------------------------------------------
    def lock(self, name: str) -> NodeLock:
        """The byte of `name` in locks/nodes.lock (store.bytelocks), or, on a filesystem with flock but
        no fcntl locks, a flock file of its own (locks.FileNodeLock)."""
        check_name("lock name", name)
        kind = self._lock_kind or self._probe_locks()
        if kind == "ofd":
            return RangeNodeLock(self._nodes_file, self.directory, name)
        if kind == "posix":
            return PosixRangeNodeLock(self._nodes_file, self.directory, name)
        lock_dir = self._ensure_dir(os.path.join(self._locks, name[:2]))  # re-created by the lock if gone
        return FileNodeLock(os.path.join(lock_dir, name + ".lock"), self.directory)

    def _probe_locks(self) -> str:
        try:
            self._lock_kind = lock_kind(self._ensure_dir(self._locks), self.directory)
        except OSError as e:
            if not is_write_failure(e):
                raise
            raise write_error(e, "taking a lock in the cache", self.directory, self._nodes_file) from e
        return self._lock_kind

    def check_locking(self) -> None:
        """One lock taken and dropped in the cache (bytelocks.lock_kind): a filesystem without locks
        fails the run once, before anything runs, with what to do."""
        if self._lock_kind is None:
            self._probe_locks()

    def stat_cache(self) -> hashing.StatCache:
        if self._stat_cache is None:
            self._stat_cache = hashing.StatCache(os.path.join(self.directory, "stat-cache.json"))
        return self._stat_cache

    def new_staging_dir(self, prefix: str = "") -> Path:
        import tempfile  # with shutil and random: ~11 M instructions that a cached run does not need
        from pathlib import Path

        return Path(self._in_dir(self._tmp, tempfile.mkdtemp, "", prefix, self._tmp))

    def prune_locks(self, before: float) -> int:
        """A lock file is unlinked only while we hold its flock, and only for a node that already has
        an entry (only --overwrite would compute it again): the worst a race can cost is that two
        processes recompute that node at the same time, each storing a correct entry. locks/nodes.lock
        is never removed (a process holding a byte of it and one of a new file would not exclude)."""
        import fcntl

        removed = 0
        for shard in _listdir(self._locks):
            shard_dir = os.path.join(self._locks, shard)
            if len(shard) != 2 or not os.path.isdir(shard_dir):  # the flock probe (locks.PROBE)
                continue
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


def _check_root(root: str, write: bool) -> bool:
    """Fail early, with what to do, on a cache path that cannot work; create nothing. Returns
    whether the cache is read-only for this process (only possible with write=False)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return False  # created at the first write
    except NotADirectoryError:
        st = None
    except PermissionError as e:
        raise StoreError(f"cache directory {root} is not accessible ({e}): fix the permissions of its "
                         "parents or choose another cache with --cache DIR or ORCH_CACHE") from e
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cache directory {root} is not a directory: remove it or choose another "
                         "cache with --cache DIR or ORCH_CACHE")
    if not os.access(root, os.R_OK | os.X_OK):
        raise StoreError(f"cache directory {root} is not readable: fix its permissions or choose "
                         "another cache with --cache DIR or ORCH_CACHE")
    writable = os.access(root, os.W_OK)  # EROFS on a read-only mount, even for root
    if write and not writable:
        raise StoreError(f"cache directory {root} is not writable: fix its permissions or choose "
                         "another cache with --cache DIR or ORCH_CACHE")
    return not writable


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


def _seen(item: tuple) -> float:
    """When a stored code manifest was last written; 0 for a damaged one (which goes first)."""
    seen = item[1].get("seen") if isinstance(item[1], dict) else None
    return seen if type(seen) is float and seen == seen else 0.0
