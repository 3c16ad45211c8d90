"""The shape of a run's manifest, checked when a command reads one back (`orch show`, `report`,
`status`, `compare`, `why`, a miss's explanation): a manifest cut short, garbled or edited by hand is
a clear error naming the file and the field (or, for listings, a run left out), never a traceback
deep inside a table or a picture."""

from __future__ import annotations

import sys

from ..store.entries import is_number

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any, Callable

#: the largest finite float: a longer int (or inf, NaN) is no duration
_FLOAT_MAX = sys.float_info.max


def _str(v: Any) -> bool:
    return type(v) is str


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str


def _duration(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and -_FLOAT_MAX <= v <= _FLOAT_MAX)


def _int(v: Any) -> bool:
    return type(v) is int


def _str_map(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str and type(x) is str for k, x in v.items())


def _mapping(v: Any) -> bool:
    return type(v) is dict


def _count_map(v: Any) -> bool:
    return type(v) is dict and all(type(x) is int for x in v.values())


def _edges(v: Any) -> bool:
    """[[input, producer id, output(, parameter set)], ...]"""
    return type(v) is list and all(
        type(e) is list and 3 <= len(e) <= 4 and type(e[0]) is str and type(e[1]) is int and type(e[2]) is str
        and (len(e) == 3 or _opt_str(e[3])) for e in v)


def _metrics(v: Any) -> bool:
    return type(v) is dict and all(type(m) is dict and all(x is None or is_number(x) for x in m.values())
                                   for m in v.values())


def _str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


#: field of the manifest -> what it must be when present
HEADER: dict[str, Callable[[Any], bool]] = {
    "run_id": _str, "experiment": _str, "argv": _str_list, "started": _str, "finished": _opt_str, "status": _str,
    "param_sets": _mapping, "summary": _count_map, "duration_s": _duration, "nodes": lambda v: type(v) is list,
}
#: field of a node -> what it must be when present (REQUIRED ones must be)
NODE: dict[str, Callable[[Any], bool]] = {
    "id": _int, "stage": _str, "stage_id": _str, "param_set": _str, "status": _str, "key": _opt_str,
    "trace": _opt_str, "reason": _opt_str, "duration_s": _duration, "computed_s": _duration, "inputs": _edges,
    "outputs": _str_map, "output_paths": _str_map, "reads": _mapping, "files": _str_map, "metrics": _metrics,
    "error": _opt_str, "error_type": _opt_str, "traceback": _opt_str, "log_path": _opt_str, "series": _opt_str,
    "skipped_because": _opt_str,
}
REQUIRED = ("stage", "param_set", "status")


def problem(m: dict) -> str | None:
    """What is wrong with the manifest `m` (a parsed JSON object), or None."""
    for name, ok in HEADER.items():
        if name in m and not ok(m[name]):
            return f"{name} is {_shown(m[name])}"
    for i, n in enumerate(m.get("nodes") or ()):
        if type(n) is not dict:
            return f"nodes[{i}] is {_shown(n)}"
        for name in REQUIRED:
            if name not in n:
                return f"nodes[{i}] has no {name}"
        for name, value in n.items():
            ok = NODE.get(name)
            if ok is not None and not ok(value):
                return f"nodes[{i}].{name} is {_shown(value)}"
    return None


def _shown(v: Any) -> str:
    text = f"an int of {v.bit_length()} bits" if type(v) is int and v.bit_length() > 64 else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
