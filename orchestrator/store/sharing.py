"""A cache shared by a team: several users of one Unix group run against one directory.

The policy, decided once per process when a writable DiskStore opens:

- **Private cache** (the default): the user's umask is honoured as it is.
- **Group-shared cache**: the cache root has the setgid bit (the usual way to share a directory with a
  group: `chgrp team DIR && chmod 2770 DIR`), or, before the root exists, the directory it will be
  made in has. Then orch gives the group what the umask gives the owner: it clears the group bits of
  this process's umask, so every directory orch makes is group-writable and -searchable, every record
  (entry, head, run manifest, log, cache file) group-readable and every lock file group-writable
  (a write lock needs a descriptor the other user can open). The kernel makes new directories inherit the
  root's group and setgid bit. The bits for others still follow the user's umask.

Either way stored objects are sealed read-only (0444 files, 0555 directories) and belong to whoever
stored them: a group member can use another's object but never write into it, and orch only ever
replaces an object by a rename of verified identical content. Being able to write the cache means
being trusted with it (README: a cache is trusted code), so the group is trusted; the setgid bit is
what makes the cache say so, not an environment variable each user must remember.
"""

from __future__ import annotations

import os
import stat

_applied: set[str] = set()


def is_group_shared(root: str | os.PathLike) -> bool:
    """The cache root (or, before it exists, the nearest existing directory above it) is setgid."""
    d = os.path.abspath(root)
    while True:
        try:
            return bool(os.stat(d).st_mode & stat.S_ISGID)
        except FileNotFoundError:
            parent = os.path.dirname(d)
            if parent == d:
                return False
            d = parent
        except OSError:
            return False


def current_umask() -> int:
    """The process umask, without changing it (Linux exposes it in /proc; elsewhere set and restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_group_policy(root: str | os.PathLike) -> bool:
    """Clear the group bits of the umask when `root` is a group-shared cache; True if it is."""
    key = os.path.abspath(root)
    if key in _applied:
        return True
    if not is_group_shared(key):
        return False
    os.umask(current_umask() & ~0o070)
    _applied.add(key)
    return True
