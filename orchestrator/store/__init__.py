"""Where bytes live: content-addressed objects and one small JSON entry per (node key, trace).

`Store` (base.py) is the interface the planner and runner code against; `DiskStore` (disk.py) is the
real thing and `MemoryStore` (memory.py) its in-memory twin for fast tests. One test suite runs
against both (tests/test_store.py).
"""

from .base import NodeLock, ObjectInfo, Store
from .disk import DiskStore
from .memory import MemoryStore

__all__ = ["ObjectInfo", "NodeLock", "Store", "DiskStore", "MemoryStore"]
