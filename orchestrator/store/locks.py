"""Node locks: one computation runs once, whoever asks for it (threads, processes, hosts).

A lock is named by a node's lock scope (core.lockscope). DiskStore locks with flock(2) on a file
per name: the kernel drops the lock when the holder dies, so a kill -9 never leaves a stale lock.
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
        f"cannot lock {path}: its filesystem does not support flock ({e.strerror or e}); orch needs it so "
        "that one computation runs once and no run reads a half-written result; mount it with flock "
        "support (NFSv4, Lustre -o flock) or put the cache elsewhere (--cache DIR / ORCH_CACHE)")


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


class FileNodeLock(NodeLock):
    """flock(2) on a per-node lock file, as filelock's UnixFileLock does, minus its per-call
    bookkeeping (a lock per executed node is on the hot path)."""

    _POLL = 0.05  # seconds between tries when a timeout is given (a blocking wait sleeps in the kernel)

    def __init__(self, path: str):
        self._path = path
        self._thread_lock = THREAD_LOCKS.get(path)
        self._fd: int | None = None

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
        """The lock file, opened for writing (NFS emulates flock with fcntl locks, which need it)."""
        try:
            try:
                return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the locks directory was removed (orch cache gc): make it again
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
                return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            from .failures import is_write_failure, write_error

            if not is_write_failure(e):
                raise
            root = os.path.dirname(os.path.dirname(os.path.dirname(self._path)))  # root/locks/ab/x.lock
            raise write_error(e, "opening a node lock", root, self._path) from e

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
            if e.errno in UNSUPPORTED:
                raise unsupported(self._path, e) from e
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the flock
        finally:
            self._thread_lock.release()
