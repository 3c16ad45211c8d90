"""Cache housekeeping behind `orch cache ls/verify/gc`, written against the Store interface.

verify re-hashes every object (the store quarantines a damaged one, so its producer re-runs) and
drops entries whose objects are gone; gc deletes objects no entry references and staging leftovers
of killed runs. Both are safe while nothing runs; while a run is active, gc only costs re-runs
(objects younger than a grace period and staging areas younger than a day are never touched).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DamagedObjectError
from ..fsutil import rmtree_force
from . import ObjectInfo, Store


@dataclass
class CacheStats:
    entries: int = 0
    nodes: int = 0
    objects: int = 0
    bytes: int = 0
    by_stage: dict[str, list[int]] = field(default_factory=dict)  # stage -> [entries, bytes]


def stats(store: Store) -> CacheStats:
    s = CacheStats()
    sizes = {}
    for info in store.iter_objects():
        s.objects += 1
        s.bytes += info.size
        sizes[info.hash] = info.size
    keys = set()
    for entry in store.iter_entries():
        keys.add(entry.key)
        s.entries += 1
        row = s.by_stage.setdefault(entry.stage, [0, 0])
        row[0] += 1
        row[1] += sum(sizes.get(o.object.hash, 0) for o in entry.outputs.values())
    s.nodes = len(keys)
    return s


@dataclass
class VerifyReport:
    checked: int = 0
    damaged: list[str] = field(default_factory=list)
    dropped_entries: int = 0


def verify(store: Store) -> VerifyReport:
    """Re-hash every object; entries whose outputs are damaged or missing are deleted (a miss)."""
    report = VerifyReport()
    good: set[str] = set()
    for info in list(store.iter_objects()):
        report.checked += 1
        try:
            store.object_path(info, verify=True)
            good.add(info.hash)
        except DamagedObjectError as e:
            report.damaged.append(str(e))
    for entry in list(store.iter_entries()):
        if any(o.object.hash not in good for o in entry.outputs.values()):
            store.delete_entry(entry.key, entry.trace_id)
            report.dropped_entries += 1
    return report


@dataclass
class GcReport:
    objects: int = 0
    bytes: int = 0
    staging: int = 0
    checkpoint_dirs: int = 0
    locks: int = 0


def gc(store: Store, *, grace_s: float = 3600.0, staging_age_s: float = 86400.0,
       checkpoint_age_s: float = 7 * 86400.0, dry: bool = False) -> GcReport:
    """Delete objects that no entry references (older than `grace_s`, so a run's fresh outputs whose
    entry is about to be written survive), staging leftovers and lock files of computed nodes older
    than `staging_age_s`, and the checkpoint directories of failed stages (record.checkpoint_dir)
    untouched for `checkpoint_age_s`."""
    report = GcReport()
    referenced = set()
    for e in store.iter_entries():
        referenced.update(o.object.hash for o in e.outputs.values())
        if e.series is not None:  # the metrics stream of the entry (its curves)
            referenced.add(e.series.hash)
    now = time.time()
    for info in list(store.iter_objects()):
        if info.hash in referenced or _age(store, info, now) < grace_s:
            continue
        report.objects += 1
        report.bytes += info.size
        if not dry:
            store.delete_object(info)
    if not dry:
        report.locks = store.prune_locks(before=now - staging_age_s)
    if store.root is not None:
        report.staging = _remove_old(Path(store.root) / "tmp", now - staging_age_s, dry)
        report.staging += _remove_old(Path(store.root) / "index", now - staging_age_s, dry,
                                      pattern="*.tmp")  # an entry index write that was killed
        report.checkpoint_dirs = _remove_old(Path(store.root) / "scratch", now - checkpoint_age_s, dry)
    return report


def _remove_old(directory: Path, before: float, dry: bool, pattern: str = "*") -> int:
    """Remove the children of `directory` (matching `pattern`) last modified before `before`; how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for child in directory.glob(pattern):
        try:
            old = newest_mtime(child) < before
        except FileNotFoundError:
            continue
        if old:
            removed += 1
            if not dry:
                rmtree_force(child, missing_ok=True)
    return removed


def newest_mtime(path: Path) -> float:
    """A directory counts as recently used if anything inside it was written recently."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def _age(store: Store, info: ObjectInfo, now: float) -> float:
    try:
        return now - os.lstat(store.object_path(info, verify=False)).st_mtime
    except (FileNotFoundError, DamagedObjectError):
        return float("inf")
