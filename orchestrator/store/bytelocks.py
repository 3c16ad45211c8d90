"""Node locks as bytes of one file, `<cache>/locks/nodes.lock`: a write lock on the byte at a hash of
the lock name. A node then creates no lock file of its own (creating one was ~20% of a 10,000-node first
run), and byte-range locks are what NFS (lockd, v4), Lustre and GPFS serve across hosts.

Two ways to take the byte, one per kernel (lock_kind probes which, once per store):

- "ofd": an open file description lock (F_OFD_SETLKW; Linux >= 3.15), owned by the open file as a
  flock is: a descriptor per acquisition, exclusive between the threads of a process too.
- "posix": a classic POSIX lock (lockf; macOS, older Linux), owned by the process, so it goes through
  one descriptor per process that is never closed (closing any descriptor of the file would drop every
  lock the process has on it) and relies on the process's thread locks between its threads.

The two kinds conflict with each other (one lock table per file, locally and on an NFS server), so
processes of different kernels on one cache still exclude each other. The file must never be removed
while runs use the cache: a new file's bytes do not exclude the old one's.
"""

from __future__ import annotations

import errno
import os
from _thread import allocate_lock

from .locks import UNSUPPORTED, DescriptorLock, check_flock, open_lock_file

#: The one file whose bytes node locks are, at the top of the locks directory.
NODES = "nodes.lock"

#: Node offsets are 62-bit hashes of lock names, below this one, which lock_kind takes: an offset plus
#: the length stays a valid (signed 64-bit) off_t.
PROBE_OFFSET = 1 << 62

#: errno of a byte someone else holds (fcntl says EAGAIN or EACCES, by system).
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)


def node_offset(name: str) -> int:
    """The byte a lock name locks: two names share one with probability 2**-62 (they would then wait
    for each other, never run at once)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 2


def _ofd_struct(kind: int, offset: int) -> bytes:
    """struct flock for one byte at `offset` (l_type, l_whence=SEEK_SET, l_start, l_len=1, l_pid=0 as
    open file description locks require): the layout of every 64-bit Linux, padded to its 32 bytes."""
    import struct

    return struct.pack("hhqqi4x", kind, 0, offset, 1, 0)


def _ofd_available() -> bool:
    import fcntl
    import sys

    return hasattr(fcntl, "F_OFD_SETLKW") and sys.platform.startswith("linux") and sys.maxsize > 2**32


class _ProcessFiles:
    """The one descriptor per nodes file a process takes POSIX byte locks through (never closed), with
    the file's identity, which names the process's thread locks (two paths may name one file)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[int, str]] = {}
        self._guard = allocate_lock()

    def get(self, path: str, root: str) -> tuple[int, str]:
        found = self._files.get(path)
        if found is None:
            with self._guard:
                found = self._files.get(path)
                if found is None:
                    fd = open_lock_file(path, root)
                    st = os.fstat(fd)
                    found = self._files[path] = (fd, f"{st.st_dev}:{st.st_ino}")
        return found


PROCESS_FILES = _ProcessFiles()


def lock_kind(lock_dir: str, root: str) -> str:
    """"ofd" or "posix" (see the module docstring), by taking and dropping the probe byte of the nodes
    file once; "flock" on a filesystem that has flock but no fcntl locks (store.locks.FileNodeLock); a
    filesystem with neither is LockingUnsupportedError, before anything runs. `lock_dir` must exist."""
    import fcntl

    path = os.path.join(lock_dir, NODES)
    fd, _ = PROCESS_FILES.get(path, root)  # also the probe's descriptor: no descriptor of it is ever closed
    if _ofd_available():
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _ofd_struct(fcntl.F_WRLCK, PROBE_OFFSET))
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _ofd_struct(fcntl.F_UNLCK, PROBE_OFFSET))
            return "ofd"
        except OSError as e:
            if e.errno in _HELD_ELSEWHERE:
                return "ofd"  # another run probes at this moment: locks work
            if e.errno != errno.EINVAL and e.errno not in UNSUPPORTED:  # EINVAL: a kernel before 3.15
                raise
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, PROBE_OFFSET)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, PROBE_OFFSET)
        return "posix"
    except OSError as e:
        if e.errno in _HELD_ELSEWHERE:
            return "posix"
        if e.errno not in UNSUPPORTED:
            raise
    check_flock(lock_dir)  # LockingUnsupportedError when there is no flock either
    return "flock"


class RangeNodeLock(DescriptorLock):
    """The byte of `name` in the nodes file, as an open file description lock: flock's semantics (per
    acquisition, exclusive between threads and processes, dropped when the holder dies)."""

    def __init__(self, path: str, root: str, name: str):
        super().__init__(path, root, f"{path}#{name}")
        self._offset = node_offset(name)

    def _take(self, fd: int, block: bool) -> bool:
        import fcntl

        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if block else fcntl.F_OFD_SETLK,
                        _ofd_struct(fcntl.F_WRLCK, self._offset))
        except OSError as e:
            if e.errno in _HELD_ELSEWHERE:
                return False
            raise
        return True


class PosixRangeNodeLock(DescriptorLock):
    """The byte of `name` in the nodes file, as a classic POSIX lock through the process's descriptor
    of it; excludes and is excluded by RangeNodeLock."""

    _OWN_DESCRIPTOR = False  # the process's: a forked child does not inherit POSIX locks anyway

    def __init__(self, path: str, root: str, name: str):
        self._fd_and_id = PROCESS_FILES.get(path, root)
        super().__init__(path, root, f"{self._fd_and_id[1]}#{name}")
        self._offset = node_offset(name)

    def _open(self) -> int:
        return self._fd_and_id[0]

    def _drop(self, fd: int) -> None:
        import fcntl

        fcntl.lockf(fd, fcntl.LOCK_UN, 1, self._offset)  # a byte this process does not hold: no-op

    def _take(self, fd: int, block: bool) -> bool:
        import fcntl

        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset)
        except OSError as e:
            # EDEADLK: the kernel's deadlock detection sees processes, not threads, and may refuse a wait
            # that is none (this thread waits on B while B waits on another thread of ours): try again
            if e.errno in _HELD_ELSEWHERE or e.errno == errno.EDEADLK:
                return False
            raise
        return True
