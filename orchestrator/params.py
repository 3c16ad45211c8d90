"""Parameter sets: ``load_params`` (the files, ``extends``, ``sweep``, ``+new`` keys and ``-S a.b=1``
are in ``orchestrator.paramfiles``), dotted paths, and the read-tracking view stages see as
``record.params``.

Parameters are addressed by dotted paths ("train.lr"); the cache key of a stage holds every path it
read with the value it saw, so the view below records each read into a plain dict."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .errors import ParamsError, UnknownParameterError

_READ_ONLY = "parameters are read-only inside a stage; use -S key=value or the params file"


class _Missing:
    """Type of MISSING; pickles and copies by name so the singleton survives process hops."""

    __slots__ = ()

    def __repr__(self):
        return "<missing>"

    def __bool__(self):
        return False

    def __reduce__(self):
        return "MISSING"


MISSING = _Missing()


class UnknownParameterKeyError(UnknownParameterError, KeyError):
    """Raised by ``params[key]``: also a KeyError so Mapping idioms (``except KeyError``) keep working."""

    __str__ = BaseException.__str__  # KeyError would quote the message


class ParamSet:
    """One named parameter set; ``values`` is plain nested data, never mutated after loading. Written
    out rather than a frozen dataclass (~3.5 M instructions to define at import, on every run);
    compared by name, values and source, as the dataclass was."""

    __slots__ = ("name", "values", "source", "orch")

    def __init__(self, name: str, values: dict, source: str, orch: dict | None = None):
        self.name, self.values, self.source = name, values, source
        # The file's `orch:` section (orchestrator.resources): settings of the run, never parameters.
        self.orch = {} if orch is None else orch

    def __eq__(self, other):
        if other.__class__ is not ParamSet:
            return NotImplemented
        return (self.name, self.values, self.source) == (other.name, other.values, other.source)

    def __hash__(self) -> int:
        return hash((self.name, self.values, self.source))  # a TypeError (dict values), as the dataclass's

    def __repr__(self) -> str:
        return f"ParamSet(name={self.name!r}, values={self.values!r}, source={self.source!r}, orch={self.orch!r})"


# ---------------------------------------------------------------------------------------- paths


def resolve(values: dict, path: str):
    """Value at a dotted path ("" is the root), or MISSING when any level is absent or not a mapping."""
    if not path:
        return values
    node = values
    for part in path.split("."):
        if not isinstance(node, dict):
            return MISSING
        node = node.get(part, MISSING)
        if node is MISSING:
            return MISSING
    return node


def is_ignored(path: str, ignore: Sequence[str]) -> bool:
    """True if ``path`` equals or lies under one of the ignored dotted prefixes."""
    return any(not p or path == p or path.startswith(p + ".") for p in ignore)


def traced_value(values: dict, path: str, ignore: Sequence[str] = ()):
    """The value a read of ``path`` records: resolve() minus ignored descendants.

    Cache lookups must compare recorded reads against this, not plain resolve(), or a subtree read
    with an ignored child would never match again."""
    return _prune(resolve(values, path), path, ignore)


def set_key(set_name: str) -> str:
    """A parameter-set name as one component of a dotted path (aggregates read `<set>.<path>`):
    set names such as `sweep[train.lr=0.1]` contain dots, so "%" and "." are escaped."""
    return set_name.replace("%", "%25").replace(".", "%2E")


def split_set_key(path: str) -> tuple[str, str]:
    """The inverse of set_key on a path an aggregate read: `<set_key(name)>.<rest>` -> (name, rest).

    The first "." ends the set's component (set_key leaves none in it); rest is "" when the whole
    set was read. Only the two escapes set_key writes are undone, in one left-to-right pass."""
    head, _, rest = path.partition(".")
    parts = head.split("%")
    name = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        if code == "25":
            name.append("%" + part[2:])
        elif code == "2E":
            name.append("." + part[2:])
        else:
            name.append("%" + part)
    return "".join(name), rest


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _prune(value, path: str, ignore: Sequence[str]):
    """Drop ignored descendants of a subtree, copying only the dicts on the way to them."""
    if not ignore or not isinstance(value, dict):
        return value
    cut = len(path) + 1 if path else 0
    rel = [p[cut:] for p in ignore if p and (not path or p.startswith(path + "."))]
    return _without(value, rel) if rel else value


def _without(tree: dict, rel_paths: list[str]) -> dict:
    out = dict(tree)
    for rel in rel_paths:
        head, _, rest = rel.partition(".")
        if head in out and not rest:
            del out[head]
        elif head in out and isinstance(out[head], dict):
            out[head] = _without(out[head], [rest])
    return out


def _copy_plain(value):
    """Deep copy of plain data (dicts and lists); far cheaper than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copy_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_plain(v) for v in value]
    return value



# -------------------------------------------------------------------------------------- loading


def load_params(paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (), yaml_cache=None) -> list[ParamSet]:
    """Load parameter files in order, apply ``-S`` overrides, expand sweeps; set names are unique.

    The files, ``extends``, ``sweep``, ``+new`` keys and overrides are ``orchestrator.paramfiles``;
    `yaml_cache` is a parsecache.ParsedTexts (parsed texts kept in a run's cache directory)."""
    from .paramfiles import load_params as load

    return load(paths, overrides, yaml_cache)


# ------------------------------------------------------------------------------- tracked view


class TrackedParams(Mapping):
    """Read-only view of a parameter set that records every read into ``reads`` (path -> value).

    Leaves are returned as copies (lists deep-copied) so a stage cannot alter the set; the value
    recorded is the set's own object. Construction copies nothing: one is built per executed stage."""

    __slots__ = ("_values", "_reads", "_set_name", "_prefix", "_ignore")

    def __init__(self, values: dict, reads: dict | None = None, *, set_name: str = "",
                 prefix: str = "", ignore: Sequence[str] = ()):
        init = object.__setattr__
        init(self, "_values", values)
        init(self, "_reads", {} if reads is None else reads)
        init(self, "_set_name", set_name)
        init(self, "_prefix", prefix)
        init(self, "_ignore", tuple(ignore))

    # -- recording
    def _record(self, path: str, value) -> None:
        if not self._ignore:
            self._reads[path] = value
        elif not is_ignored(path, self._ignore):
            self._reads[path] = _prune(value, path, self._ignore)

    def _fetch(self, key) -> tuple[str, object]:
        if not isinstance(key, str) or not key:
            raise TypeError(f"parameter keys are non-empty strings, not {key!r}")
        value = resolve(self._values, key) if "." in key else self._values.get(key, MISSING)
        return _join(self._prefix, key), value

    def _wrap(self, path: str, value, record: bool = True):
        if isinstance(value, dict):
            return TrackedParams(value, self._reads, set_name=self._set_name, prefix=path,
                                 ignore=self._ignore)
        if record:
            self._record(path, value)
        return _copy_plain(value)

    def _read_all(self) -> dict:
        """Reading the whole subtree (iteration, len, ==, to_dict) records it under the prefix."""
        self._record(self._prefix, self._values)
        return self._values

    def _missing(self, key: str, path: str, error_type: type) -> Exception:
        self._record(path, MISSING)
        rel_parent = key.rpartition(".")[0]
        parent_path = path.rpartition(".")[0]
        parent = resolve(self._values, rel_parent)
        where = f"under '{parent_path}'" if parent_path else "at the top level"
        if isinstance(parent, dict):
            shown = list(parent)[:20]
            more = ", ..." if len(parent) > 20 else ""
            known = f"known keys {where}: {', '.join(shown)}{more}" if shown else f"no keys {where}"
        else:
            known = f"'{parent_path}' is not a mapping" if parent is not MISSING else \
                f"'{parent_path}' is not set either"
        in_set = f" in parameter set '{self._set_name}'" if self._set_name else ""
        return error_type(f"parameter '{path}' is not set{in_set} ({known}); add it to the "
                          "parameter file or use record.params.get(...)")

    # -- access
    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        path, value = self._fetch(name)
        if value is MISSING:
            raise self._missing(name, path, UnknownParameterError)
        return self._wrap(path, value)

    def __getitem__(self, key):
        path, value = self._fetch(key)
        if value is MISSING:
            raise self._missing(key, path, UnknownParameterKeyError)
        return self._wrap(path, value)

    def get(self, key, default=None):
        """Value at key, or ``default`` when absent (the absence is recorded)."""
        path, value = self._fetch(key)
        if value is MISSING:
            self._record(path, MISSING)
            return default
        return self._wrap(path, value)

    def __contains__(self, key) -> bool:
        if not isinstance(key, str) or not key:
            return False
        path, value = self._fetch(key)
        self._record(path, value)
        return value is not MISSING

    # -- whole-subtree reads
    def __iter__(self):
        return iter(self._read_all())

    def __len__(self) -> int:
        return len(self._read_all())

    def keys(self):
        return self._read_all().keys()

    def values(self):
        return self._wrapped_items().values()

    def items(self):
        return self._wrapped_items().items()

    def _wrapped_items(self) -> dict:
        return {k: self._wrap(_join(self._prefix, k), v, record=False)
                for k, v in self._read_all().items()}

    def to_dict(self) -> dict:
        """A deep, plain, mutable copy of this subtree (which counts as read)."""
        return _copy_plain(self._read_all())

    def __eq__(self, other):
        if isinstance(other, TrackedParams):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None

    # -- copying, pickling, mutation
    def __copy__(self):
        return self  # an immutable view

    def __deepcopy__(self, memo):
        return self.to_dict()

    def __reduce_ex__(self, protocol):
        raise TypeError("record.params cannot be pickled; pass record.params.to_dict() instead")

    def __setattr__(self, name, value):
        raise ParamsError(f"cannot set '{_join(self._prefix, name)}': {_READ_ONLY}")

    def __delattr__(self, name):
        raise ParamsError(f"cannot delete '{_join(self._prefix, name)}': {_READ_ONLY}")

    def __setitem__(self, key, value):
        raise ParamsError(f"cannot set '{_join(self._prefix, str(key))}': {_READ_ONLY}")

    def __delitem__(self, key):
        raise ParamsError(f"cannot delete '{_join(self._prefix, str(key))}': {_READ_ONLY}")

    def __repr__(self) -> str:
        where = repr(self._prefix) if self._prefix else "root"
        in_set = f" of set {self._set_name!r}" if self._set_name else ""
        return f"<TrackedParams {where}{in_set}: {', '.join(map(str, self._values))}>"
