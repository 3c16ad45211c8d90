"""Small filesystem helpers shared by the store, the hashing caches and the run records.

Durability model: a file is written under a temporary name in its final directory and renamed into
place, so a reader (or a re-run after kill -9) sees either the old content or the new, never a partial
file. There is deliberately no fsync: the atomic rename is the unit of durability (an entry lost to a
power cut costs a re-run; fsync per node would cost 1-10 ms each, see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import stat
import sys

_EXEC_BITS = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


class LazyLogger:
    """`logging.getLogger(name)`, with logging imported on the first message: a cached run logs
    nothing, and importing logging costs ~19 M instructions (as much as planning 100 cached nodes)."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str):
        import logging

        return getattr(logging.getLogger(self.name), attr)


log = LazyLogger(__name__)


_unique: list = []  # [pid.random prefix, counter] of this process, made on first use, reset in a forked child


def unique_suffix() -> str:
    """`{pid}.{random}{n}`: unique across processes and hosts on a shared filesystem (a random
    prefix per process, then a counter), at no syscall per name (getpid and getrandom were two)."""
    if not _unique:
        _unique.extend((f"{os.getpid()}.{os.urandom(6).hex()}", itertools.count()))
    return f"{_unique[0]}{next(_unique[1]):x}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unique.clear)


def temp_name(path: str) -> str:
    """`.{name}.{pid}.{random}.tmp` next to `path`: unique across processes and hosts on a shared
    filesystem, and hidden so that directory listings of entries skip it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{unique_suffix()}.tmp")


def make_dirs(d: str) -> None:
    """os.makedirs(d, exist_ok=True) for a path whose parents usually exist: mkdir first, so the usual
    case is one syscall (os.makedirs stats every parent first), parents made only on ENOENT. Like
    os.makedirs(exist_ok=True), a non-directory in the way is left for the caller's next step to trip on."""
    try:
        os.mkdir(d)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(d)
        if not parent or parent == d:
            raise
        make_dirs(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(d)


def _open_exclusive(tmp: str) -> int:
    """Create `tmp`; the parent directory is made only when missing, so the usual case costs no mkdir."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        make_dirs(os.path.dirname(tmp) or ".")
        return os.open(tmp, flags, 0o666)


#: The size from which one os.write into a new file is slow on some machines. Linux (ext4 since 6.16,
#: XFS) backs such a write with large folios; in a VM whose host maps guest memory on first touch
#: (Firecracker, as on the machines orch is benchmarked on), folios from never-touched memory cost a
#: host fault per page. There, with fresh memory, a run's 198 KB report took 1.25-1.5 ms in one write
#: against 0.05-0.1 ms in slices, 16 MiB 104-127 ms against 5-8 ms (BENCHMARKS.md, Round 14); on
#: memory used before, both are fast, and slices cost ~50 us more per MiB.
LARGE_WRITE = 128 << 10
WRITE_SLICE = LARGE_WRITE // 2


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a file object would add fstat, ioctl and lseek calls),
    never LARGE_WRITE bytes or more at once: WRITE_SLICE at a time, and what is left below
    LARGE_WRITE in one call (a pickle frame just over a slice stays one write)."""
    view = memoryview(data).cast("B")
    size, done = len(view), 0
    while done < size:
        left = size - done
        done += os.write(fd, view[done:done + (left if left < LARGE_WRITE else WRITE_SLICE)])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> os.stat_result:
    """Write `data` to `path` through a temp file and os.replace; on error the temp is removed.
    Returns the written file's fstat: whether `path` is still that file can be told later (by its
    device, inode, size and mtime, which neither the rename nor a hard link changes)."""
    path = os.fspath(path)
    tmp = temp_name(path)
    fd = _open_exclusive(tmp)
    try:
        try:
            write_all(fd, data)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # a failed write() names no file: say which record it was
        raise
    return st


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    """Compact JSON, serialized before any file is created so that a bad object leaves nothing behind."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def read_json(path: str | os.PathLike) -> object:
    """The parsed content of a JSON file. Raises FileNotFoundError, OSError or ValueError (corrupt
    JSON, invalid UTF-8, nesting deeper than the parser's recursion limit): callers decide whether
    that is a miss, a warning or an error."""
    with io.open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{os.fspath(path)}: JSON nested too deeply to parse") from None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """A JSON file holding an object, or None when it is missing, unreadable or not an object
    (for records whose absence and damage mean the same: nothing usable there)."""
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError):  # (RecursionError: damage nested beyond the parser's depth)
        return None
    return data if isinstance(data, dict) else None


def json_exact(value: object, depth: int = 0) -> bool:
    """Whether JSON gives `value` back as it is: dicts with str keys, lists, str (without surrogates),
    int, bool, None and finite floats (not a tuple, a subclass, a set, bytes, NaN; nothing nested
    deeper than 100)."""
    t = type(value)
    if t is str:
        return value.isascii() or _no_surrogates(value)
    if t is int or t is bool or value is None:
        return True
    if t is float:
        return value - value == 0.0  # inf - inf and nan - nan are nan
    if depth > 100:
        return False
    if t is list:
        return all(json_exact(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and json_exact(k) and json_exact(v, depth + 1) for k, v in value.items())
    return False


def _no_surrogates(text: str) -> bool:
    """JSON writes surrogates as \\u escapes and reads two adjacent ones back as one character
    ("\\ud83d\\ude00" -> U+1F600): a str holding any is not given back as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_cache_file(path: str | os.PathLike | None, version: object, field: str) -> dict:
    """data[field] of a versioned JSON cache file (fingerprints, stat cache). Missing, unreadable,
    corrupt or of another version means empty: losing a cache file only costs time."""
    if path is None or not os.path.exists(path):
        return {}
    try:
        data = read_json(path)
        found = data[field] if isinstance(data, dict) and data.get("version") == version else {}
        if not isinstance(found, dict):
            raise ValueError(f"{field} is not a mapping")
        return found
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable cache file %s: %s", path, e)
        return {}


def save_cache_file(path: str | os.PathLike, data: dict) -> bool:
    """atomic_write_json for cache files: a failure is a warning and False, never an error. A cache
    that is read-only for this user (EROFS, EACCES) is a supported way to use one: no warning."""
    try:
        atomic_write_json(path, data)
        return True
    except OSError as e:
        quiet = e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        (log.debug if quiet else log.warning)("could not save the cache file %s: %s", path, e)
        return False


def readonly_mode(mode: int) -> int:
    """0o444, or 0o555 for an executable file (a stored script or binary must stay runnable)."""
    return 0o555 if mode & _EXEC_BITS else 0o444


def make_readonly(path: str | os.PathLike, *, skip_top: bool = False) -> None:
    """Files become 0o444 (0o555 if executable), directories 0o555; symlinks are left alone (chmod
    would follow them out of the tree). `skip_top` leaves the top directory as it is: Linux needs
    write permission on a directory to rename it into another parent, so callers seal it after."""
    path = os.fspath(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISDIR(st.st_mode):
        os.chmod(path, readonly_mode(st.st_mode))
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(p, readonly_mode(st.st_mode))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    if not skip_top:
        os.chmod(path, 0o555)


def make_writable_dir(path: str | os.PathLike) -> None:
    """Give the owner write access to one directory (to rename it or delete its children)."""
    os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)


def rmtree_force(path: str | os.PathLike, *, missing_ok: bool = False) -> None:
    """Delete a file or a directory tree even when it was made read-only (stored objects are).

    Deleting an entry needs write permission on its directory, so a directory is made writable
    when, and only when, a removal inside it is refused."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    import shutil

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_chmod_and_retry)
    else:
        shutil.rmtree(path, onerror=lambda func, p, exc_info: _chmod_and_retry(func, p, exc_info[1]))


def _chmod_and_retry(func, failed_path: str, exc: BaseException) -> None:
    """shutil.rmtree error hook: removing an entry was refused because its directory is read-only
    (0o555, as stored objects are): make that directory writable and retry once. Anything else
    propagates."""
    if not isinstance(exc, PermissionError) or func not in (os.unlink, os.remove, os.rmdir):
        raise exc
    make_writable_dir(os.path.dirname(failed_path))
    func(failed_path)
