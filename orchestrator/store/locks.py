"""Node locks: one computation runs once, whoever asks for it (threads, processes, hosts).

A lock is named by a node's lock scope (core.lockscope). DiskStore takes one byte of one file per name
(store.bytelocks), or, on a filesystem that has flock but no fcntl locks, flocks a file per name
(FileNodeLock). Whichever kind, the kernel drops the lock when its holder dies, so a kill -9 never leaves
a stale lock; a thread lock of the process comes first (threads of one process do not always exclude
each other in the kernel), and a child forked while a lock is held does not keep it.
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


class _Process:
    """What node locks share within one process, whichever store instance they go through.

    - A thread lock per lock name: threads of one process must exclude each other too, and the kernel
      does not always do it (classic POSIX locks and NFS's emulated flock belong to the process).
    - The locks held through descriptors of their own: a forked child gets copies of those descriptors,
      and an open file description lock or flock lives while any copy is open, so a child that outlives
      the node (a pool a stage leaves running) would keep the node locked; the child closes them."""

    def __init__(self) -> None:
        self._locks: dict[str, LockType] = {}
        self._guard = allocate_lock()
        self.held: set[DescriptorLock] = set()

    def thread_lock(self, name: str) -> LockType:
        with self._guard:
            return self._locks.setdefault(name, allocate_lock())

    def after_fork_in_child(self) -> None:
        """Locks held by the parent's threads are not the child's: fresh thread locks, and the
        descriptors of held locks closed (the parent's own copies keep its locks)."""
        self._locks = {}
        self._guard = allocate_lock()
        for lock in self.held:
            lock.forget()
        self.held = set()


PROCESS = _Process()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PROCESS.after_fork_in_child)


#: What flock(2) and fcntl(2) fail with on a filesystem that does not support them (NFS without lockd,
#: some FUSE and object-store mounts, Lustre without -o flock).
UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def unsupported(path: str, e: OSError) -> LockingUnsupportedError:
    return LockingUnsupportedError(
        f"cannot lock {path}: its filesystem does not support file locks (flock/fcntl: {e.strerror or e}); "
        "orch needs them so that one computation runs once and no run reads a half-written result; mount "
        "it with lock support (NFSv4, Lustre -o flock) or put the cache elsewhere (--cache DIR / ORCH_CACHE)")


def open_lock_file(path: str, root: str) -> int:
    """A lock file, created if missing, opened for writing (fcntl write locks need it)."""
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the locks directory was removed: make it again
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        from .failures import is_write_failure, write_error

        if not is_write_failure(e):
            raise
        raise write_error(e, "opening a node lock", root, path) from e


class DescriptorLock(NodeLock):
    """A kernel lock taken through a descriptor, after the process's thread lock of its name.
    By default the descriptor is opened per acquisition and closing it releases the lock (flock, open
    file description locks); a subclass may take it elsewhere (_open) and let go otherwise (_drop)."""

    _POLL = 0.05  # seconds between tries when a timeout is given (a blocking wait sleeps in the kernel)
    _OWN_DESCRIPTOR = True  # whether _open gives a descriptor of this acquisition's own (see _Process)

    def __init__(self, path: str, root: str, thread_key: str):
        self._path = path
        self._root = root  # the cache, named by a failure to open the lock file
        self._thread_lock = PROCESS.thread_lock(thread_key)
        self._fd: int | None = None

    @abc.abstractmethod
    def _take(self, fd: int, block: bool) -> bool:
        """Lock through `fd`, waiting if `block`; False if someone else holds it (and not `block`), or
        if the kernel refused a wait it took for a deadlock (then it is tried again)."""

    def _open(self) -> int:
        return open_lock_file(self._path, self._root)

    def _drop(self, fd: int) -> None:
        os.close(fd)  # closing the only descriptor releases the lock

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
            got = self._wait(fd, timeout, deadline)
        except BaseException:
            self._drop(fd)
            self._thread_lock.release()
            raise
        if not got:
            self._drop(fd)
            self._thread_lock.release()
            return False
        self._fd = fd
        if self._OWN_DESCRIPTOR:
            PROCESS.held.add(self)
        return True

    def _wait(self, fd: int, timeout: float, deadline: float) -> bool:
        try:
            if timeout < 0:
                while not self._take(fd, True):
                    time.sleep(self._POLL)
                return True
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
        PROCESS.held.discard(self)
        try:
            if fd is not None:
                self._drop(fd)
        finally:
            self._thread_lock.release()

    def forget(self) -> None:
        """In a forked child: close this process's copy of the descriptor; the lock stays the parent's."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # right after fork it is open; nothing else of ours to undo
                pass


class FileNodeLock(DescriptorLock):
    """flock(2) on a lock file of the node's own (locks/ab/<name>.lock), as filelock's UnixFileLock
    does: on a filesystem with flock but no fcntl locks (NFS mounted local_lock=flock), where such
    locks exclude the processes of one host only."""

    def __init__(self, path: str, root: str):
        super().__init__(path, root, path)

    def _take(self, fd: int, block: bool) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


#: The file check_flock locks, at the top of the locks directory (flock node locks live in 2-letter shards).
PROBE = "probe.lock"


def check_flock(lock_dir: str) -> None:
    """Take and drop a flock in `lock_dir` once: a filesystem without it is one clear error before
    anything runs, not a failure of every node. `lock_dir` must exist."""
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
