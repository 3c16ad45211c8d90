"""MemoryStore: the in-memory twin of DiskStore for fast planner/runner tests (one suite runs on both)."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Iterator

from .. import hashing
from ..fsutil import atomic_write_bytes, make_readonly, rmtree_force
from .base import Store
from .entries import CodeManifest, Entry, Head, ObjectInfo, check_name, check_object
from .locks import NodeLock, ThreadNodeLock


class MemoryStore(Store):
    """In-memory twin for fast planner/runner tests. Entries are kept as JSON text (so they round-trip
    like on disk); objects as bytes (files) or {relpath: (kind, data)} (dirs; kind is file, exec,
    dir or link), materialized read-only in a private temp dir when object_path is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.root = None
        self._objects: dict[tuple[str, str], tuple[ObjectInfo, object]] = {}
        self._entries: dict[str, dict[str, str]] = {}
        self._heads: dict[str, str] = {}
        self._code: dict[str, str] = {}
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
        check_object(info)
        return os.path.join(self._private_dir(), "objects", info.hash[:2], info.hash[2:] + info.ext)

    def ingest(self, path: Path, ext: str = "") -> ObjectInfo:
        src = os.fspath(path)
        kind, digest, size = hashing.hash_path(src)
        info = ObjectInfo(digest, size, kind, ext)
        check_object(info)
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

    def get_entry(self, key: str, trace_id: str, *, label: str = "") -> Entry | None:
        text = self._entries.get(check_name("node key", key), {}).get(check_name("trace id", trace_id))
        return None if text is None else self._parse_entry(text, f"memory:{key}/{trace_id}", key, trace_id, label)

    def get_entries(self, key: str, *, label: str = "") -> list[Entry]:
        texts = list(self._entries.get(check_name("node key", key), {}).items())
        entries = [self._parse_entry(text, f"memory:{key}/{tid}", key, tid, label) for tid, text in texts]
        return sorted((e for e in entries if e is not None), key=lambda e: e.created, reverse=True)

    def put_entry(self, entry: Entry) -> None:
        text = json.dumps(entry.to_json(), separators=(",", ":"))  # fails like the disk store on bad values
        self._entries.setdefault(check_name("node key", entry.key), {})[check_name("trace id", entry.trace_id)] = text

    def delete_entry(self, key: str, trace_id: str) -> None:
        self._entries.get(check_name("node key", key), {}).pop(check_name("trace id", trace_id), None)

    def iter_entries(self) -> Iterator[Entry]:
        for key in sorted(self._entries):
            yield from self.get_entries(key)

    def get_head(self, name: str, *, label: str = "") -> Head | None:
        text = self._heads.get(check_name("head name", name))
        return None if text is None else self._parse_head(text, f"memory:head/{name}", label)

    def put_head(self, name: str, head: Head) -> None:
        self._heads[check_name("head name", name)] = json.dumps(head.to_json(), separators=(",", ":"))

    def get_code_manifest(self, digest: str) -> CodeManifest | None:
        text = self._code.get(check_name("code digest", digest))
        return None if text is None else self._parse_code_manifest(text, f"memory:code/{digest}")

    def put_code_manifests(self, manifests: dict[str, CodeManifest]) -> None:
        for digest, manifest in manifests.items():
            self._code.setdefault(check_name("code digest", digest), json.dumps(manifest.to_json(), separators=(",", ":")))

    def lock(self, name: str) -> NodeLock:
        with self._guard:
            return ThreadNodeLock(self._locks.setdefault(check_name("lock name", name), threading.Lock()))

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
