"""The store: where bytes live. Content-addressed objects, one small typed entry per (node key,
trace), head records, node locks, and the housekeeping behind `orch cache`.

`Store` (base.py) is the interface the planner, runner and executors code against; `DiskStore`
(disk.py) is the real thing and `MemoryStore` (memory.py) its in-memory twin for fast tests. One
test suite runs against both (tests/test_store.py). What an entry is: entries.py. Where a new
store goes: ARCHITECTURE.md.
"""

from .base import Store
from .disk import DiskStore
from .entries import CodeManifest, Entry, EntryError, Head, KeyComponents, ObjectInfo, Read, StoredOutput
from .location import cache_dir
from .locks import NodeLock

__all__ = ["CodeManifest", "Store", "DiskStore", "MemoryStore", "NodeLock", "Entry", "EntryError", "Head", "KeyComponents",
           "ObjectInfo", "Read", "StoredOutput", "cache_dir"]


def __getattr__(name: str):
    """MemoryStore (tests, in-memory runs) is imported when first asked for: `orch run` never uses it."""
    if name == "MemoryStore":
        from .memory import MemoryStore

        return MemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
