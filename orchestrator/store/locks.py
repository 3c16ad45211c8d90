"""Node locks: one computation runs once, whoever asks for it (threads, processes, hosts).

A lock is named by a node's lock scope (core.lockscope). DiskStore locks one byte of one file per
name (RangeNodeLock: an open file description lock), or, where the kernel has no such locks, flock(2)s
a file per name (FileNodeLock); either way the kernel drops the lock when the holder dies, so a kill -9
never leaves a stale lock. All processes on a cache must use the same kind: one host's kernel decides it
for every process there (see DiskStore.lock).
"""

from __future__ import annotations

import abc
import errno
import os
import time
from _thread import LockType, allocate_lock  # threading's Lock, without importing threading (4 M instructions)

from ..errors import LockingUnsupportedError


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


def acquire_thread_lock(lock: LockType, timeout: float) -> bool:
    return lock.acquire() if timeout < 0 else lock.acquire(timeout=timeout)


class ThreadNodeLock(NodeLock):
    """Threads of one process only (the in-memory store)."""

    def __init__(self, lock: LockType):
        self._lock = lock

    def acquire(self, timeout: float = -1) -> bool:
        return acquire_thread_lock(self._lock, timeout)

    def release(self) -> None:
        self._lock.release()


class _ThreadLocks:
    """One thread lock per lock file, for the whole process. flock excludes processes; threads of
    one process need this too (on NFS, flock is emulated with per-process fcntl locks that do not
    exclude threads), whichever store instance they go through: hence one registry per process."""

    def __init__(self) -> None:
        self._locks: dict[str, LockType] = {}
        self._guard = allocate_lock()

    def get(self, path: str) -> LockType:
        with self._guard:
            return self._locks.setdefault(path, allocate_lock())

    def reset(self) -> None:
        """In a forked child: locks held by the parent's threads must not be inherited (they would
        never be released there)."""
        self._locks = {}
        self._guard = allocate_lock()


THREAD_LOCKS = _ThreadLocks()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=THREAD_LOCKS.reset)


#: What flock(2) fails with on a filesystem that does not support it (NFS without lockd, some
#: FUSE and object-store mounts, Lustre without -o flock).
UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def unsupported(path: str, e: OSError) -> LockingUnsupportedError:
    return LockingUnsupportedError(
        f"cannot lock {path}: its filesystem does not support file locks (flock/fcntl: {e.strerror or e}); "
        "orch needs them so that one computation runs once and no run reads a half-written result; mount "
        "it with lock support (NFSv4, Lustre -o flock) or put the cache elsewhere (--cache DIR / ORCH_CACHE)")


#: The file check_flock locks, at the top of the locks directory (node locks live in 2-letter shards).
PROBE = "probe.lock"


def check_flock(lock_dir: str) -> None:
    """Take and drop a lock in `lock_dir` once: a filesystem without flock is one clear error
    before anything runs, not a failure of every node. `lock_dir` must exist."""
    import fcntl

    fd = os.open(os.path.join(lock_dir, PROBE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        pass  # another run probes at this moment: flock works
    except OSError as e:
        if e.errno in UNSUPPORTED:
            raise unsupported(lock_dir, e) from e
        raise
    finally:
        os.close(fd)


class _DescriptorLock(NodeLock):
    """A kernel lock held through a descriptor of our own, opened per acquisition: the kernel drops it
    when the descriptor closes, however the holder dies. A thread lock of the process comes first
    (see _ThreadLocks)."""

    _POLL = 0.05  # seconds between tries when a timeout is given (a blocking wait sleeps in the kernel)

    def __init__(self, path: str, root: str, thread_key: str):
        self._path = path
        self._root = root  # the cache, named by a failure to open the lock file
        self._thread_lock = THREAD_LOCKS.get(thread_key)
        self._fd: int | None = None

    @abc.abstractmethod
    def _take(self, fd: int, block: bool) -> bool:
        """Lock through `fd`, waiting if `block`; False if someone else holds it (and not `block`)."""

    def acquire(self, timeout: float = -1) -> bool:
        deadline = time.monotonic() + timeout
        if not acquire_thread_lock(self._thread_lock, timeout):
            return False
        try:
            fd = self._open()
        except BaseException:
            self._thread_lock.release()
            raise
        try:
            if not self._wait(fd, timeout, deadline):
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
        """The lock file, opened for writing (NFS emulates flock with fcntl locks, which need it)."""
        try:
            try:
                return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the locks directory was removed: make it again
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
                return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            from .failures import is_write_failure, write_error

            if not is_write_failure(e):
                raise
            raise write_error(e, "opening a node lock", self._root, self._path) from e

    def _wait(self, fd: int, timeout: float, deadline: float) -> bool:
        try:
            if timeout < 0:
                return self._take(fd, True)
            while not self._take(fd, False):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(self._POLL, left))
            return True
        except OSError as e:
            if e.errno in UNSUPPORTED:
                raise unsupported(self._path, e) from e
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the lock
        finally:
            self._thread_lock.release()


class FileNodeLock(_DescriptorLock):
    """flock(2) on a lock file of the node's own (locks/ab/<name>.lock), as filelock's UnixFileLock
    does: where open file description locks are missing (RangeNodeLock)."""

    def __init__(self, path: str, root: str):
        super().__init__(path, root, path)

    def _take(self, fd: int, block: bool) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


# -- every node lock a byte of one file ---------------------------------------------------------------

#: The one file whose bytes RangeNodeLocks lock, at the top of the locks directory.
NODES = "nodes.lock"

#: Node offsets are 62-bit hashes of lock names, below this one, which probe_ranges takes: an offset
#: plus the length stays a valid (signed 64-bit) off_t.
PROBE_OFFSET = 1 << 62


def _flock_struct(kind: int, offset: int) -> bytes:
    """struct flock for one byte at `offset` (l_type, l_whence=SEEK_SET, l_start, l_len, l_pid=0 as
    open file description locks require; 64-bit Linux layout, padded to its 32 bytes)."""
    import struct

    return struct.pack("hhqqi4x", kind, 0, offset, 1, 0)


def node_offset(name: str) -> int:
    """The byte of the nodes file a lock name locks: two names share one with probability 2**-62
    (they would then wait for each other, never run at once)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 2


def ranges_available() -> bool:
    """Open file description locks exist here (Linux >= 3.15, Python >= 3.9, 64-bit)."""
    import fcntl
    import sys

    return hasattr(fcntl, "F_OFD_SETLKW") and sys.maxsize > 2**32


def probe_ranges(path: str) -> bool:
    """Take and drop the probe byte of `path` once: whether this kernel has open file description
    locks (an old one says EINVAL, and flock files are used instead). A filesystem that supports no
    locks at all is one LockingUnsupportedError before anything runs, not a failure of every node."""
    import fcntl

    if not ranges_available():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_WRLCK, PROBE_OFFSET))
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_UNLCK, PROBE_OFFSET))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True  # another run probes at this moment: locks work
        if e.errno == errno.EINVAL:
            return False
        if e.errno in UNSUPPORTED:
            raise unsupported(os.path.dirname(path), e) from e
        raise
    finally:
        os.close(fd)
    return True


class RangeNodeLock(_DescriptorLock):
    """A write lock on one byte of the cache's nodes file (locks/nodes.lock), named by the lock name:
    an open file description lock (F_OFD_SETLKW), owned by the open file as flock's is, so it has
    flock's semantics (per acquisition, exclusive between threads and processes, dropped when the
    holder dies) and NFS, Lustre and GPFS serve it across hosts. A node then needs no lock file of its
    own: creating one was ~20% of a 10,000-node first run."""

    def __init__(self, path: str, root: str, name: str):
        super().__init__(path, root, f"{path}#{name}")
        self._offset = node_offset(name)

    def _take(self, fd: int, block: bool) -> bool:
        import fcntl

        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if block else fcntl.F_OFD_SETLK,
                        _flock_struct(fcntl.F_WRLCK, self._offset))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True
