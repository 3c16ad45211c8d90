"""Naming a parameter set on the command line or in `orchestrator.load`: the exact name, or a short form.

A swept set is named `NAME[PATH=VALUE,...]` (params._expand), e.g. `sweep[train.lr=0.1,model.width=16]`,
which needs shell quoting and is long to type. A short form names it by some of its swept values:
`lr=0.1,width=16`, `train.lr=0.1`, `width=16` — each `KEY=VALUE` matches a swept path equal to KEY or
ending in `.KEY`, values compared as written in the set name (so `lr=0.10` is not `lr=0.1`), in any
order, any subset; `sweep[lr=0.1]` also requires the set's NAME. The form must identify exactly one set.

One function, `resolve_param_set`, does this for every place a user names a set (`orch get`, `why`,
`accept`, `orchestrator.load`), from any list of set names: a run's manifest or a planned experiment.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import ParamSetNotFoundError

#: How many set names an error message lists before it says how many more there are.
SHOWN = 20

_SWEPT = re.compile(r"(?P<base>[^\[\]]*)\[(?P<label>.*)\]", re.DOTALL)
# A pair starts at the beginning or after a comma that is followed by `key=` (values such as JSON
# lists `[1,2]` contain commas of their own).
_PAIR_SPLIT = re.compile(r",(?=[^,=\[\]{}\"]+=)")


def swept_values(set_name: str) -> tuple[str, dict[str, str]] | None:
    """(NAME, {path: value as written}) of a swept set's name; None for a name without sweep values."""
    m = _SWEPT.fullmatch(set_name)
    if m is None:
        return None
    pairs = _pairs(m.group("label"))
    return (m.group("base"), pairs) if pairs else None


def matching_sets(query: str, names: Iterable[str]) -> list[str]:
    """The sets `query` names, in the order given: [query] for an exact name, else every set the
    short form matches (none when `query` is not a short form)."""
    names = list(dict.fromkeys(names))
    if query in names:
        return [query]
    wanted = _parse_query(query)
    if wanted is None:
        return []
    base, pairs = wanted
    return [n for n in names if _matches(base, pairs, swept_values(n))]


def resolve_param_set(query: str, names: Iterable[str], where: str) -> str:
    """The one set of `names` that `query` names (exact name or short form). `where` says whose
    sets these are in the error ("run 20250101-...", "this experiment"): no match or several
    matches raise ParamSetNotFoundError listing the candidates."""
    names = list(dict.fromkeys(names))
    found = matching_sets(query, names)
    if len(found) == 1:
        return found[0]
    if found:
        raise ParamSetNotFoundError(
            f"parameter set {query!r} is ambiguous in {where}: it matches {len(found)} sets: {listing(found)}; "
            f"name more of its values, or the whole name")
    example = example_short_form(names)
    hint = f" (name a set exactly, or by its swept values: e.g. {example})" if example else ""
    raise ParamSetNotFoundError(f"{where} has no parameter set {query!r}; its sets: {listing(names) or 'none'}{hint}")


def example_short_form(names: Iterable[str]) -> str | None:
    """A short form of the first swept set in `names` (leaf names, every value), for messages."""
    swept = next((s for s in map(swept_values, names) if s is not None), None)
    if swept is None:
        return None
    return ",".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in swept[1].items())


def short_names(names: Iterable[str], wanted: Iterable[str] | None = None) -> dict[str, str]:
    """A short form for each of `wanted` (default: every name) that names it among `names`: the swept
    values that differ between the sets, by leaf name where that is unambiguous (`lr=0.1,width=16`).
    A set with no such form (not swept, or one the form would not single out) keeps its name.
    Linear in len(names) plus the work per wanted set, so a legend of 10 sets out of 10,000 is cheap."""
    names = list(dict.fromkeys(names))
    parsed = {n: v for n in names if (v := swept_values(n)) is not None}
    values_of: dict[str, set] = {}  # path -> the values it takes (None: a swept set without it)
    count: dict[str, int] = {}
    for _, pairs in parsed.values():
        for path, value in pairs.items():
            values_of.setdefault(path, set()).add(value)
            count[path] = count.get(path, 0) + 1
    for path, seen in values_of.items():
        if count[path] < len(parsed):
            seen.add(None)
    varying = [path for path, seen in values_of.items() if len(seen) > 1]
    leaves: dict[str, int] = {}
    for path in values_of:  # how many paths a key would match (leaf `lr` matches `lr` and `x.lr`)
        for k in _suffixes(path):
            leaves[k] = leaves.get(k, 0) + 1
    index: dict[tuple[str, str], set[str]] = {}  # (path, value) -> the sets that have it
    for n, (_, pairs) in parsed.items():
        for path, value in pairs.items():
            index.setdefault((path, value), set()).add(n)
    exact = set(names)
    out = {}
    for name in (names if wanted is None else wanted):
        form = None
        if name in parsed and varying:
            pairs = parsed[name][1]
            shown = {min((k for k in _suffixes(p) if leaves[k] == 1), key=len, default=p): pairs[p]
                     for p in varying if p in pairs}
            form = ",".join(f"{k}={v}" for k, v in shown.items())
            if (not shown or form in exact or _parse_query(form) != (None, shown)
                    or _found(shown, index, values_of) != {name}):
                form = None
        out[name] = form or name
    return out


def _suffixes(path: str) -> list[str]:
    """The keys that match `path` in a short form: `train.lr` -> [lr, train.lr]."""
    parts = path.split(".")
    return [".".join(parts[k:]) for k in range(len(parts) - 1, -1, -1)]


def _found(pairs: dict[str, str], index: dict, values_of: dict) -> set[str]:
    """The swept sets a short form's pairs match (as _matches decides), from the index."""
    found: set[str] | None = None
    for key, value in pairs.items():
        hits = set().union(*(index.get((p, value), ()) for p in values_of if p == key or p.endswith("." + key)))
        found = hits if found is None else found & hits
    return found or set()


def _parse_query(query: str) -> tuple[str | None, dict[str, str]] | None:
    m = _SWEPT.fullmatch(query.strip())
    if m is not None and "=" not in m.group("base"):  # NAME[k=v,...]; not k=[1,2]
        base, label = m.group("base").strip(), m.group("label")
    else:
        base, label = None, query
    pairs = _pairs(label, strip=True)
    return (base, pairs) if pairs else None


def _pairs(label: str, strip: bool = False) -> dict[str, str]:
    """{key: value} of `k=v,k=v`; {} when any part is not `key=value`."""
    out = {}
    for part in _PAIR_SPLIT.split(label):
        key, eq, value = part.partition("=")
        if strip:
            key, value = key.strip(), value.strip()
        if not eq or not key:
            return {}
        out[key] = value
    return out


def _matches(base: str | None, pairs: dict[str, str], swept: tuple[str, dict[str, str]] | None) -> bool:
    if swept is None or base is not None and base != swept[0]:
        return False
    return all(any(value == v and (path == key or path.endswith("." + key)) for path, v in swept[1].items())
               for key, value in pairs.items())


def listing(names: list[str]) -> str:
    """Set names for an error message: the first SHOWN, then how many more."""
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
