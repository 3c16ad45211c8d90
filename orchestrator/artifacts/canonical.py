"""Canonical pickles: equal values give equal bytes, so early cutoff holds.

Pickle writes a set in its iteration order, which for strings follows the per-process hash seed: an
upstream stage that re-runs and returns an equal vocabulary `set` would store different bytes and
re-run everything downstream. Here every set and frozenset of sortable elements inside plain
containers (dicts, lists, tuples, sets) is pickled from its sorted elements; it still unpickles as a
plain set (the pickle names only `builtins.set`). Dicts keep their order: it is observable. Values
without sets pickle exactly as before, at C speed; sets of unsortable elements keep their order,
and so do sets held in the attributes of objects (their pickles may differ between processes: the
conservative way, a needless re-run downstream, never a wrong hit).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
#: What pickle raises for a value it cannot serialize (one place: workers, in-memory hashes).
PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError)


class _SortedSet(set):
    __slots__ = ("_sorted",)

    def __reduce__(self):
        return set, (self._sorted,)


class _SortedFrozenSet(frozenset):
    __slots__ = ("_sorted",)

    def __reduce__(self):
        return frozenset, (self._sorted,)


def dumps(value: Any, protocol: int = 5) -> bytes:
    buf = io.BytesIO()
    dump(value, buf, protocol)
    return buf.getvalue()


def dump(value: Any, file, protocol: int = 5) -> None:
    """pickle.dump with sets in sorted order (see the module docstring)."""
    try:
        value = _canonical(value, {})
    except RecursionError:  # too deep (or cyclic) to rewrite: pickled as it is, at worst not canonical
        pass
    pickle.dump(value, file, protocol=protocol)


def _canonical(value: Any, memo: dict) -> Any:
    """`value` with its sets replaced by sorted-pickling twins; containers on the way to one are
    copied (shared ones once), everything else is returned as it is."""
    t = type(value)
    if t not in _CONTAINERS:
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    members = value.items() if t is dict else value
    nested = t is dict and not _CONTAINERS.isdisjoint(map(type, value.values())) \
        or not _CONTAINERS.isdisjoint(map(type, value))  # one C-level pass: plain data needs no copy
    if t is dict:
        out = value
        if nested:
            items = [(_canonical(k, memo), _canonical(v, memo)) for k, v in members]
            if any(k2 is not k or v2 is not v for (k2, v2), (k, v) in zip(items, value.items())):
                out = dict(items)
    elif t is list or t is tuple:
        out = value
        if nested:
            items = [_canonical(v, memo) for v in value]
            if any(a is not b for a, b in zip(items, value)):
                out = t(items)
    else:
        items = [_canonical(v, memo) for v in value] if nested else value
        try:
            ordered = sorted(items)
        except TypeError:  # no order among its elements: leave it
            out = value if items is value else t(items)
        else:
            out = (_SortedSet if t is set else _SortedFrozenSet)(ordered)
            out._sorted = ordered
    memo[key] = out
    return out
