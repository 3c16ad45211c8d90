"""Loading parameter sets: YAML files (``extends``, ``sweep``) and Python files (``get_params()``),
``-S`` overrides, sweep expansion. ``orchestrator.params.load_params`` is the entry point; this module
is imported only when parameters are loaded."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ParamsError
from .params import MISSING, ParamSet, _copy_plain, _join, is_ignored, resolve

RESERVED = ("name", "extends", "sweep")
_SCALARS = (str, int, float, bool, type(None))


@dataclass
class _Unexpanded:
    """A parameter set before sweep expansion: overrides apply here, so set names stay stable."""

    name: str
    values: dict
    source: str
    sweep: dict
    sweep_source: str = ""


def _leaf_paths(values: dict, prefix: str = ""):
    for key, value in values.items():
        path = _join(prefix, key)
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, path)
        else:
            yield path


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
