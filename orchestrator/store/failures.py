"""What to tell a user when the cache's filesystem refuses a write.

A full disk, a quota, a read-only mount or a permission the team forgot are environment problems,
not bugs of a stage: they must reach the user as one line naming what was being written, the path,
the cause in words ("no space left on device") and what to do, never as an OSError traceback.
Callers decide the consequence: a node whose output or entry cannot be written fails (everything
that finished is stored already: objects and entries only ever appear by rename), a run whose
record cannot be written stops.
"""

from __future__ import annotations

import errno
import os

from ..errors import CacheWriteError

#: errno -> the cause in words, for the write errors a cache's filesystem gives.
_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this filesystem",
}
FULL = (errno.ENOSPC, errno.EDQUOT)


def is_write_failure(e: BaseException) -> bool:
    """An OSError the filesystem gives for a write it refuses (not a bug, not a missing file)."""
    return isinstance(e, OSError) and e.errno in _CAUSES


def write_error(e: OSError, what: str, cache_root: str | os.PathLike, path: str | os.PathLike | None = None) -> CacheWriteError:
    """A CacheWriteError for `e`: "{what}: cannot write {path}: no space left on device; free space ..."."""
    cause = _CAUSES.get(e.errno, e.strerror or type(e).__name__)
    where = e.filename or path or cache_root
    if e.errno in FULL:
        advice = (f"free space on the cache's filesystem ({cache_root}; `orch cache gc` drops what no entry uses) "
                  "or choose another cache (--cache DIR / ORCH_CACHE)")
    else:
        advice = (f"make the cache {cache_root} writable for you (for a team cache, see README: Sharing a cache "
                  "with a team) or choose another cache (--cache DIR / ORCH_CACHE)")
    err = CacheWriteError(f"{what}: cannot write {os.fspath(where)}: {cause}; {advice}; "
                          "everything that finished is stored and a re-run continues from it")
    err.errno = e.errno
    return err
