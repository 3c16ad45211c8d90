"""Parameter sets: load YAML / Python parameter files (``extends``, ``sweep``, ``-S a.b=1``) and the
read-tracking view stages see as ``record.params``.

Parameters are addressed by dotted paths ("train.lr"); the cache key of a stage holds every path it
read with the value it saw, so the view below records each read into a plain dict."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ParamsError, UnknownParameterError

RESERVED = ("name", "extends", "sweep")
_SCALARS = (str, int, float, bool, type(None))
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


@dataclass(frozen=True)
class ParamSet:
    """One named parameter set; ``values`` is plain nested data, never mutated after loading."""

    name: str
    values: dict
    source: str


@dataclass
class _Unexpanded:
    """A parameter set before sweep expansion: overrides apply here, so set names stay stable."""

    name: str
    values: dict
    source: str
    sweep: dict
    sweep_source: str = ""


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


def _leaf_paths(values: dict, prefix: str = ""):
    for key, value in values.items():
        path = _join(prefix, key)
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, path)
        else:
            yield path


# -------------------------------------------------------------------------------------- loading


def _plain(value, source: str, path: str = "", addressable: bool = True):
    """Validate and deep-copy loaded data: JSON-like types only, string keys, no '.' in addressable keys.

    Copying here makes every set independent (YAML anchors would otherwise share sub-dicts)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            _check_key(key, source, path, addressable)
            out[key] = _plain(item, source, _join(path, key), addressable)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, source, f"{path}[{i}]", False) for i, item in enumerate(value)]
    if type(value) in _SCALARS:  # exact types: numpy scalars or enums would hash ambiguously
        return value
    raise ParamsError(
        f"{source}: parameter '{path}' has unsupported type {type(value).__name__}; use plain data "
        "(mappings, lists, strings, numbers, true/false, null), e.g. quote dates in YAML")


def _check_key(key, source: str, parent: str, addressable: bool) -> None:
    where = f" under '{parent}'" if parent else ""
    if not isinstance(key, str) or not key:
        raise ParamsError(f"{source}: parameter key {key!r}{where} must be a non-empty string; "
                          "quote it in YAML (e.g. '1': ...)")
    if addressable and "." in key:
        raise ParamsError(f"{source}: parameter key '{key}'{where} contains '.', which separates the "
                          "levels of a parameter path; nest it as a mapping instead")


def _read_yaml(path: Path, source: str, extended_by: str | None = None) -> dict:
    """Parse one YAML file into a mapping; an empty file is an empty mapping."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        by = f" (extended by {extended_by}; paths are relative to its directory)" if extended_by else ""
        raise ParamsError(f"parameter file {source} not found{by}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"cannot read parameter file {source}: {exc}") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"{source}{line}: invalid YAML: {problem}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of parameters, "
                          f"not a {type(data).__name__}")
    return data


def _extends_list(raw: dict, source: str) -> list[str]:
    ext = raw.get("extends")
    if ext is None:
        return []
    ext = [ext] if isinstance(ext, str) else ext
    if not isinstance(ext, list) or not all(isinstance(e, str) and e for e in ext):
        raise ParamsError(f"{source}: 'extends' must be a file name or a list of file names")
    return ext


def _deep_merge(base: dict, over: dict) -> dict:
    """Child over base: mappings merge recursively, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_yaml(path: Path, source: str, chain: tuple = (), extended_by: str | None = None):
    """(raw, values, sweep, sweep_source) of a YAML file with its ``extends`` bases merged underneath."""
    raw = _read_yaml(path, source, extended_by)
    chain = chain + ((os.path.realpath(path), source),)
    values, sweep, sweep_source = {}, {}, ""
    for rel in _extends_list(raw, source):
        base_path = path.parent / rel
        base_source = os.path.normpath(os.path.join(os.path.dirname(source), rel))
        if base_path.suffix == ".py":
            raise ParamsError(f"{source}: 'extends' takes YAML files only, not {rel}")
        if any(real == os.path.realpath(base_path) for real, _ in chain):
            cycle = " -> ".join([s for _, s in chain] + [base_source])
            raise ParamsError(f"'extends' cycle: {cycle}; remove one of these extends")
        _, b_values, b_sweep, b_source = _load_yaml(base_path, base_source, chain, source)
        values = _deep_merge(values, b_values)
        if b_source:
            sweep, sweep_source = b_sweep, b_source
    own = {k: v for k, v in raw.items() if k not in RESERVED}
    values = _deep_merge(values, _plain(own, source))
    if "sweep" in raw:
        sweep, sweep_source = _parse_sweep(raw["sweep"], source), source
    return raw, values, sweep, sweep_source


def _parse_sweep(sweep, source: str) -> dict:
    """Validate ``sweep:`` (dotted key -> non-empty list); null or {} means no sweep."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise ParamsError(f"{source}: 'sweep' must map parameter paths to lists of values")
    out = {}
    for key, options in sweep.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ParamsError(f"{source}: sweep key {key!r} must be a dotted parameter path like train.lr")
        if not isinstance(options, list) or not options:
            raise ParamsError(f"{source}: sweep of '{key}' must be a non-empty list of values, "
                              f"e.g. {key}: [0.1, 0.01]")
        out[key] = _plain(options, source, key)
    return out


def _set_name(raw_name, default: str, source: str) -> str:
    if raw_name is None:
        return default
    if not isinstance(raw_name, str) or not raw_name:
        raise ParamsError(f"{source}: 'name' must be a non-empty string")
    return raw_name


def _load_yaml_file(path: Path, source: str) -> list[_Unexpanded]:
    raw, values, sweep, sweep_source = _load_yaml(path, source)
    name = _set_name(raw.get("name"), path.stem, source)
    return [_Unexpanded(name, values, source, sweep, sweep_source)]


def _load_python_file(path: Path, source: str) -> list[_Unexpanded]:
    """Run a .py parameter file and collect get_params(): a dict or a list of dicts."""
    import runpy

    if not path.is_file():
        raise ParamsError(f"parameter file {source} not found")
    try:
        namespace = runpy.run_path(str(path))
        get_params = namespace.get("get_params")
        if not callable(get_params):
            raise ParamsError(f"{source}: a Python parameter file must define get_params() "
                              "returning a list of dicts (or one dict)")
        result = get_params()
    except ParamsError:
        raise
    except (Exception, SystemExit) as exc:
        raise ParamsError(f"{source}: error in parameter file: {type(exc).__name__}: {exc}") from exc
    items = [result] if isinstance(result, dict) else result
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, dict) for i in items):
        raise ParamsError(f"{source}: get_params() must return a list of dicts or one dict, "
                          f"got {type(result).__name__}")
    return [_python_set(item, i, len(items), path.stem, source) for i, item in enumerate(items)]


def _python_set(item: dict, index: int, count: int, stem: str, source: str) -> _Unexpanded:
    where = f"{source} (get_params()[{index}])"
    for key in ("extends", "sweep"):
        if key in item:
            raise ParamsError(f"{where}: '{key}' is only supported in YAML files; "
                              "return one dict per parameter set instead")
    default = stem if count == 1 else f"{stem}[{index}]"
    name = _set_name(item.get("name"), default, where)
    values = _plain({k: v for k, v in item.items() if k != "name"}, where)
    return _Unexpanded(name, values, source, {})


def _load_file(path: str | os.PathLike) -> list[_Unexpanded]:
    source = os.fspath(path)
    path = Path(path)
    if path.suffix == ".py":
        return _load_python_file(path, source)
    return _load_yaml_file(path, source)


# ------------------------------------------------------------------------------------ overrides


def _parse_override(text: str) -> tuple[str, object]:
    """Split "a.b=VALUE" on the first '=' and parse VALUE as YAML (empty is null)."""
    import yaml

    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not all(key.split(".")):
        raise ParamsError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. -S train.lr=0.1")
    try:
        value = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {text!r}: the value is not valid YAML ({exc}); quote it") from None
    return key, _plain(value, f"--set {key}", key)


def _apply_override(units: list[_Unexpanded], key: str, value) -> None:
    """Set an existing key in every set that has it; unknown or swept keys are errors."""
    for unit in units:
        for swept in unit.sweep:
            if is_ignored(swept, [key]) or is_ignored(key, [swept]):
                what = f"{key} is swept" if swept == key else f"{key} overlaps the swept {swept}"
                raise ParamsError(f"{what} in {unit.sweep_source}; "
                                  "remove it from the sweep or drop the --set")
    hits = [u for u in units if resolve(u.values, key) is not MISSING]
    if not hits:
        import difflib

        known = sorted({p for u in units for p in _leaf_paths(u.values)})
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"did you mean: {', '.join(close)}?" if close else "no similar parameter exists"
        raise ParamsError(f"--set {key}: no parameter set has '{key}' ({hint}); --set only changes "
                          "existing parameters, so add it to the parameter file first")
    for unit in hits:
        parent, _, leaf = key.rpartition(".")
        resolve(unit.values, parent)[leaf] = _copy_plain(value)


# ----------------------------------------------------------------------------------- expansion


def _format_value(value) -> str:
    """Compact, stable rendering of a swept value for set names."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    import json

    return json.dumps(value, separators=(",", ":"))


def _set_path(values: dict, key: str, value, source: str) -> None:
    """Set a swept key, creating missing parent mappings; an existing non-mapping parent is an error."""
    node = values
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            parent = ".".join(parts[: i + 1])
            raise ParamsError(f"{source}: cannot sweep '{key}': '{parent}' is a "
                              f"{type(node).__name__}, not a mapping")
    node[parts[-1]] = value


def _expand(unit: _Unexpanded) -> list[ParamSet]:
    """One ParamSet per sweep combination (first key varies slowest), each with its own copy."""
    if not unit.sweep:
        return [ParamSet(unit.name, _copy_plain(unit.values), unit.source)]
    keys = list(unit.sweep)
    sets = []
    for combo in itertools.product(*(unit.sweep[k] for k in keys)):
        values = _copy_plain(unit.values)
        for key, value in zip(keys, combo):
            _set_path(values, key, _copy_plain(value), unit.source)
        label = ",".join(f"{k}={_format_value(v)}" for k, v in zip(keys, combo))
        sets.append(ParamSet(f"{unit.name}[{label}]", values, unit.source))
    return sets


def load_params(paths: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> list[ParamSet]:
    """Load parameter files in order, apply ``-S`` overrides, expand sweeps; set names are unique."""
    parsed = [_parse_override(text) for text in overrides]
    units = [unit for path in paths for unit in _load_file(path)]
    for key, value in parsed:
        _apply_override(units, key, value)
    sets, seen = [], {}
    for param_set in (s for unit in units for s in _expand(unit)):
        if param_set.name in seen:
            where = (f"twice in {param_set.source}" if seen[param_set.name] == param_set.source
                     else f"in {seen[param_set.name]} and {param_set.source}")
            raise ParamsError(f"duplicate parameter set name '{param_set.name}' {where}; "
                              "give one of them another 'name:'")
        seen[param_set.name] = param_set.source
        sets.append(param_set)
    return sets


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
