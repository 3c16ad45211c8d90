"""The stat cache: file hashes remembered by (size, mtime_ns, inode), so an unchanged large file
(a tracked dataset, a referenced checkpoint) is hashed once, not on every run."""

from __future__ import annotations

import os
import time

from ..fsutil import load_cache_file, save_cache_file

#: A file modified less than this long ago (ns) is "racy": another write within the file system's
#: timestamp granularity (a jiffy on Linux) could leave the same stamp, so its hash is not remembered.
RACY_NS = 100_000_000


class StatCache:
    """Remembers file hashes by (size, mtime_ns, inode) so unchanged large files are hashed once.

    Persisted as JSON, written atomically; concurrent savers merge with what is on disk and the
    last writer wins on conflicts, which at worst costs a re-hash (every hit is re-validated)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = path  # the JSON file it persists in; None: kept in memory only
        self._entries: dict[str, list] | None = None
        self._dirty: dict[str, list] = {}

    def get(self, path, st: os.stat_result | None = None) -> str | None:
        """The remembered hash if the file still has the same size, mtime and inode, else None."""
        entry = self._load().get(os.path.abspath(path))
        if entry is None:
            return None
        st = st if st is not None else os.stat(path)
        return entry[3] if entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino] else None

    def put(self, path, st: os.stat_result, digest: str) -> None:
        """Remember a hash for the stat it was computed under (not if the mtime is racy)."""
        if not is_racy(st.st_mtime_ns):
            key = os.path.abspath(path)
            self._load()[key] = self._dirty[key] = [st.st_size, st.st_mtime_ns, st.st_ino, digest]

    def save(self) -> None:
        """Merge with the file on disk and write it atomically; failing only costs re-hashing."""
        if self.path is not None and self._dirty:
            merged = {**self._read(), **self._dirty}
            if save_cache_file(self.path, {"version": 1, "entries": merged}):
                self._entries, self._dirty = merged, {}

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, list]:
        """The remembered hashes on disk; a record that is not [size, mtime_ns, inode, sha256 hex] (a
        damaged or hand-edited file) is left out: its file is hashed again, never given that value."""
        entries = load_cache_file(self.path, 1, "entries")
        return {k: v for k, v in entries.items() if type(v) is list and len(v) == 4 and _is_digest(v[3])}


def _is_digest(d: object) -> bool:
    return type(d) is str and len(d) == 64 and not d.strip("0123456789abcdef")


def is_racy(mtime_ns: int) -> bool:
    """Changed so recently that another write could keep the same timestamp: don't remember it
    (whole-second timestamps mean a coarse file system, e.g. FAT's 2 s: wait longer)."""
    return time.time_ns() - mtime_ns < (20 * RACY_NS if mtime_ns % 1_000_000_000 == 0 else RACY_NS)
