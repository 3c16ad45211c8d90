"""Files and directory trees: streamed content hashes, and the stat signatures that let an
unchanged file skip re-hashing (the stat cache, verified objects, referenced files)."""

from __future__ import annotations

import os
import stat as stat_mod

from . import sha
from .values import hash_value

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from .statcache import StatCache

_CHUNK = 1 << 20  # one reused read buffer for files below _MMAP_MIN
_MMAP_MIN = 64 << 20  # below this, mapping costs more than it saves
_MMAP_WINDOW = 16 << 20  # hashed per window, then released to the kernel: flat memory for any size


def hash_file(path, stat_cache: StatCache | None = None) -> str:
    """sha256 of the file's bytes, streamed; skipped when the stat cache knows the file."""
    return _hash_file(path, os.stat(path), stat_cache)


def _sha256_of(path, size: int) -> str:
    """Streamed: large files through mmap in 16 MiB windows (no copy into Python buffers, ~10%
    faster), small ones through one reused buffer. Never the whole file in memory."""
    h = sha.use_openssl()()
    with open(path, "rb", buffering=0) as f:
        if size >= _MMAP_MIN:
            import mmap

            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                drop = getattr(mmap, "MADV_DONTNEED", None)
                try:
                    for start in range(0, len(m), _MMAP_WINDOW):
                        h.update(view[start:start + _MMAP_WINDOW])
                        if drop is not None:  # let the kernel reclaim the window just hashed
                            m.madvise(drop, start, min(_MMAP_WINDOW, len(m) - start))
                finally:
                    view.release()
        else:  # no bigger than the file: a zeroed 1 MiB buffer per 5-byte pickle cost more than hashing it
            buf = bytearray(min(_CHUNK, size + 1))
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
    return h.hexdigest()


def hash_file_signed(path: str, size: int) -> tuple[str, tuple]:
    """sha256 of a regular file of about `size` bytes, read to the end, and its stat signature
    (size, mtime_ns, inode) taken after reading: a stat before hashing that matches it saw the very
    bytes hashed. Small files are read with os.open/os.read (no file object: fewer syscalls)."""
    if size >= _MMAP_MIN:
        digest = _sha256_of(path, size)
        st = os.stat(path)
        return digest, (st.st_size, st.st_mtime_ns, st.st_ino)
    h = sha.use_openssl()()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        n = _CHUNK if size >= _CHUNK else size + 1  # one read, then EOF, for a small file
        while chunk := os.read(fd, n):
            h.update(chunk)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return h.hexdigest(), (st.st_size, st.st_mtime_ns, st.st_ino)


def _hash_file(path, st: os.stat_result, stat_cache: StatCache | None) -> str:
    if stat_cache is not None and (known := stat_cache.get(path, st)) is not None:
        return known
    digest = _sha256_of(path, st.st_size)
    if stat_cache is not None:
        after = os.stat(path)  # only remember what was not modified while we read it
        if (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino):
            stat_cache.put(path, after, digest)
    return digest


def hash_dir(path, stat_cache: StatCache | None = None) -> str:
    """Hash of a tree's content: relative paths, kinds, file hashes, exec bits, link targets.
    Independent of mtimes, of walk order and of where the tree lives; empty dirs count."""
    return _dir(path, stat_cache)[0]


def hash_path(path, stat_cache: StatCache | None = None) -> tuple[str, str, int]:
    """(kind, hash, size) of a file or a directory (a symlink at the top is followed)."""
    st = os.stat(path)  # FileNotFoundError if missing
    if stat_mod.S_ISDIR(st.st_mode):
        return ("dir", *_dir(path, stat_cache))
    if stat_mod.S_ISREG(st.st_mode):
        return "file", _hash_file(path, st, stat_cache), st.st_size
    raise ValueError(f"cannot hash {path}: not a regular file or directory")


def _dir(root, stat_cache: StatCache | None) -> tuple[str, int]:
    entries, size, todo = [], 0, [(os.fspath(root), "")]
    while todo:
        abs_dir, rel_dir = todo.pop()
        with os.scandir(abs_dir) as it:
            for e in it:
                rel = f"{rel_dir}{e.name}"
                if e.is_symlink():
                    entries.append((rel, "link", os.readlink(e.path)))
                elif e.is_dir(follow_symlinks=False):
                    entries.append((rel, "dir", None))
                    todo.append((e.path, rel + "/"))
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    digest = _hash_file(e.path, st, stat_cache)
                    entries.append((rel, "file", (digest, bool(st.st_mode & stat_mod.S_IXUSR))))
                    size += st.st_size
                else:
                    raise ValueError(f"cannot hash {e.path}: special file (fifo, socket or device)")
    entries.sort(key=lambda entry: entry[0])
    return hash_value(("dir-v1", entries)), size


def stat_signature(path, kind: str) -> tuple:
    """What must be unchanged for an earlier hash of `path` to still hold: (size, mtime_ns, inode)
    of a file, or of every file of a tree by relative path, its directories included (empty ones
    count in hash_dir; a directory's own mtime would miss edits inside it)."""
    if kind == "file":
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    root, sig = os.fspath(path), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        sig.extend((rel, name) for name in dirnames)
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            sig.append((rel, name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sig)
