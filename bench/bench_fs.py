"""What the filesystem under a benchmark costs, apart from orch: the metadata operations a first run
makes per node, and creating files right after many were deleted.

    python bench/bench_fs.py [DIR ...]      # default: tempfile's directory

ext4 without a journal (as on these VMs' root filesystem) will not reuse an inode for 60-360 s after
it was freed (fs/ext4/ialloc.c, recently_deleted()), and scans the inode table past every such inode
for each file it creates. A benchmark whose first run follows the deletion of a large cache measures
that scan. A journaled ext4, XFS or tmpfs do not have it. BENCHMARKS.md, Round 10, has the figures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import filesystem  # noqa: E402

N = 10_000
DATA = b"x" * 800  # about an entry


def per_op(base: str, n: int = N) -> dict[str, float]:
    """Microseconds per operation, in orch's store layout (256 shards; a directory per key)."""
    for s in range(256):
        os.makedirs(f"{base}/e/{s:02x}")
        os.makedirs(f"{base}/r/{s:02x}")
    keys = [secrets.token_hex(32) for _ in range(n)]
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        for k in keys:
            fn(f"{base}/e/{k[:2]}/{k}", k)
        out[name] = (time.perf_counter() - t0) / n * 1e6

    def create(d, k):
        fd = os.open(f"{d}/.t.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, DATA)
        os.close(fd)

    def missing(d, k):
        try:
            os.listdir(d + "x")
        except FileNotFoundError:
            pass

    timed("mkdir (a key's directory)", lambda d, k: os.mkdir(d))
    timed("create + write + close", create)
    timed("rename into place", lambda d, k: os.rename(f"{d}/.t.tmp", f"{d}/t.json"))
    timed("link (a head)", lambda d, k: os.link(f"{d}/t.json", f"{base}/r/{k[:2]}/{k}.json"))
    timed("stat", lambda d, k: os.stat(f"{d}/t.json"))
    timed("listdir of a missing directory", missing)
    return out


def create_after_delete(base: str, n: int = 20_000) -> tuple[float, float]:
    """Seconds to create `n` empty files in a new directory, then again right after deleting them."""

    def make(d):
        os.makedirs(d)
        t0 = time.perf_counter()
        for i in range(n):
            os.close(os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
        return time.perf_counter() - t0

    fresh = make(f"{base}/a")
    shutil.rmtree(f"{base}/a")
    return fresh, make(f"{base}/b")


def main(dirs: list[str]) -> None:
    for where in dirs or [tempfile.gettempdir()]:
        base = tempfile.mkdtemp(prefix="orch-fs-", dir=where)
        try:
            ops = per_op(f"{base}/ops")
            shutil.rmtree(f"{base}/ops")
            fresh, after = create_after_delete(f"{base}/cad")
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"{where}: {filesystem(where)}")
        for name, us in ops.items():
            print(f"  {name:32} {us:7.1f} us")
        print(f"  create 20,000 files: {fresh:.2f} s, then {after:.2f} s right after deleting them; without a "
              "journal, both also pay for what was deleted on this filesystem in the last minutes")


if __name__ == "__main__":
    main(sys.argv[1:])
