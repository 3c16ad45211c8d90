"""Loading parameter sets: YAML files (``extends``, ``sweep``, ``+new`` keys) and Python files
(``get_params()``), ``-S`` overrides, sweep expansion. ``orchestrator.params.load_params`` is the entry
point; this module is imported only when parameters are loaded.

Strict the way Hydra is: a file that extends a base, a sweep and ``-S`` change parameters that exist;
adding one is explicit, spelled ``+key`` (``train: {+wd: 0.1}``, ``sweep: {+train.wd: [0, 0.1]}``,
``-S +train.wd=0.1``), and a ``+key`` that exists is an error too. A file that extends nothing is a
base and defines its keys freely, except that a top-level key that looks like a misspelled reserved
word and holds what that word takes (``sweeps: {train.lr: [...]}``, ``extend: base.yaml``,
``nmae: big``) is refused unless written ``+key``.

A top-level ``orch:`` section is no parameter: it holds settings of the run (``orch: {resources: {train:
{gpus: 1}}}``, see orchestrator.resources), merged along ``extends`` like parameters and never part of a key."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

from .errors import ParamsError
from .params import MISSING, ParamSet, _copy_plain, _join, is_ignored, resolve

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any

RESERVED = ("name", "extends", "sweep")
ORCH = "orch"  # settings of the run, not parameters (orchestrator.resources): never part of a key
NEW = "+"  # marks a key that its base does not have yet
_SCALARS = (str, int, float, bool, type(None))
# How many edits (case aside) still make a key a misspelling of a reserved word: one for the short
# "name" (two would catch "date" and "time").
_TYPO_EDITS = {"sweep": 2, "extends": 2, "name": 1}


# _Unexpanded, _File and _At are plain classes, not dataclasses: defining a dataclass costs 2-3 M
# instructions at import (its methods are generated and compiled), and every run loads parameters.


class _Unexpanded:
    """A parameter set before sweep expansion: overrides apply here, so set names stay stable."""

    __slots__ = ("name", "values", "source", "sweep", "sweep_source", "orch")

    def __init__(self, name: str, values: dict, source: str, sweep: dict, sweep_source: str = "",
                 orch: dict | None = None):
        self.name, self.values, self.source, self.sweep, self.sweep_source = name, values, source, sweep, sweep_source
        self.orch = {} if orch is None else orch  # the `orch:` section


def _yaml_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def _leaf_paths(values: dict, prefix: str = ""):
    for key, value in values.items():
        path = _join(prefix, key)
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, path)
        else:
            yield path


def _did_you_mean(path: str, trees) -> str:
    """Close matches of a dotted path that ``trees`` lack: among the keys beside it where its parent
    exists (train.lrr -> train.lr, not train.layers), else the paths ending in its last key (lr ->
    train.lr), else among every parameter path."""
    import difflib

    parent, _, leaf = path.rpartition(".")
    beside = sorted({k for tree in trees if isinstance(node := resolve(tree, parent), dict) for k in node})
    close = [_join(parent, c) for c in difflib.get_close_matches(leaf, beside, n=3)]
    if not close:
        known = sorted({p for tree in trees for p in _leaf_paths(tree)})
        close = [p for p in known if p.endswith("." + leaf)][:3] or difflib.get_close_matches(path, known, n=3)
    return f"did you mean: {', '.join(close)}?" if close else "no similar parameter exists"


# ------------------------------------------------------------------------------- plain data


def _plain(value, source, path: str = "", addressable: bool = True):
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


def _check_key(key, source, parent: str, addressable: bool) -> None:
    where = f" under '{parent}'" if parent else ""
    if not isinstance(key, str) or not key:
        raise ParamsError(f"{source}: parameter key {key!r}{where} must be a non-empty string; "
                          "quote it in YAML (e.g. '1': ...)")
    if addressable and "." in key:
        raise ParamsError(f"{source}: parameter key '{key}'{where} contains '.', which separates the "
                          "levels of a parameter path; nest it as a mapping instead")
    if addressable and key.startswith(NEW):
        raise ParamsError(f"{source}: parameter key '{key}'{where} starts with '+', which only marks "
                          "a new key (once, in a YAML file: '+wd: 0.1'; on the command line: "
                          "-S +train.wd=0.1); remove the '+'")


# ------------------------------------------------------------------------------- YAML files


class _File:
    """A YAML parameter file being loaded: where errors point."""

    __slots__ = ("path", "source", "bases", "base_values")

    def __init__(self, path: str, source: str, bases: tuple[str, ...] = (), base_values: dict | None = None):
        self.path, self.source = path, source
        self.bases = bases  # the files it extends, as written
        self.base_values = base_values  # theirs, merged

    def at(self, keys: tuple) -> _At:
        return _At(self, keys)


class _At:
    """"file:line" of a key (raw YAML keys from the top), found only when an error is formatted."""

    __slots__ = ("file", "keys")

    def __init__(self, file: _File, keys: tuple):
        self.file, self.keys = file, keys

    def __str__(self) -> str:
        return f"{self.file.source}{_line_of(self.file.path, self.keys)}"


def _line_of(path: str, keys: Sequence) -> str:
    """":N", the line of the key at ``keys`` in a YAML file (or of its deepest parent found), or ""."""
    import yaml

    try:
        node = yaml.compose(_read_text(path), Loader=_yaml_loader())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    line = ""
    for key in keys:
        found = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    found = (k, v)  # the last one wins, as in the loaded mapping
        if found is None:
            return line
        line, node = f":{found[0].start_mark.line + 1}", found[1]
    return line


if TYPE_CHECKING:
    #: how a YAML text becomes a value: PyYAML's safe loader, or a parsecache.ParsedTexts' load in front of it
    Parse = Callable[[str], Any]


def _read_yaml(path: str, source: str, parse: Parse, extended_by: str | None = None) -> dict:
    """Parse one YAML file into a mapping; an empty file is an empty mapping."""
    try:
        text = _read_text(path)
    except FileNotFoundError:
        by = f" (extended by {extended_by}; paths are relative to its directory)" if extended_by else ""
        raise ParamsError(f"parameter file {source} not found{by}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"cannot read parameter file {source}: {exc}") from None
    try:
        data = parse(text)
    except Exception as exc:
        import yaml

        if not isinstance(exc, yaml.YAMLError):
            raise
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


def _load_yaml(path: str, source: str, parse: Parse, chain: tuple = (), extended_by: str | None = None):
    """(raw, values, sweep, sweep_source, orch) of a YAML file with its ``extends`` bases merged underneath."""
    raw = _read_yaml(path, source, parse, extended_by)
    chain = chain + ((os.path.realpath(path), source),)
    bases = _extends_list(raw, source)
    values, sweep, sweep_source, orch = {}, {}, "", {}
    for rel in bases:
        base_path = _named(os.path.join(os.path.dirname(path), rel))
        base_source = os.path.normpath(os.path.join(os.path.dirname(source), rel))
        if _suffix(base_path) == ".py":
            raise ParamsError(f"{source}: 'extends' takes YAML files only, not {rel}")
        if any(real == os.path.realpath(base_path) for real, _ in chain):
            cycle = " -> ".join([s for _, s in chain] + [base_source])
            raise ParamsError(f"'extends' cycle: {cycle}; remove one of these extends")
        _, b_values, b_sweep, b_source, b_orch = _load_yaml(base_path, base_source, parse, chain, source)
        values = _deep_merge(values, b_values)
        orch = _deep_merge(orch, b_orch)
        if b_source:
            sweep, sweep_source = b_sweep, b_source
    file = _File(path, source, tuple(bases), values if bases else None)
    own = {k: v for k, v in raw.items() if k not in RESERVED and k != ORCH}
    if ORCH in raw:
        from .resources import check_orch_section

        orch = _deep_merge(orch, check_orch_section(raw[ORCH], source))
    values = _deep_merge(values, _plain(_unmark(own, file, (), file.base_values), source))
    if "sweep" in raw:
        sweep, sweep_source = _parse_sweep(raw["sweep"], file, values), source
    return raw, values, sweep, sweep_source, orch


# ------------------------------------------------------------------------ strictness of files


def _unmark(mapping: dict, file: _File, keys: tuple, base: dict | None) -> dict:
    """``mapping`` (a file's own parameters at ``keys``) with its '+' markers removed.

    Where it merges into a ``base`` mapping (a file that extends one), a plain key must exist there and
    a '+key' must not. ``base`` is None where nothing is merged into: in a file that extends nothing,
    under a '+key', and where the value replaces a base value that is not a mapping."""
    parent = ".".join(k[1:] if k.startswith(NEW) else k for k in keys)
    out = {}
    for key, value in mapping.items():
        at = file.at(keys + (key,))
        new = isinstance(key, str) and key.startswith(NEW)
        name = key[1:] if new else key
        if new and not name:
            raise ParamsError(f"{at}: '+' must be followed by the new key's name, e.g. +wd: 0.1")
        _check_key(name, at, parent, True)
        path = _join(parent, name)
        if name in out:
            raise ParamsError(f"{at}: '{path}' is given twice, as '{name}' and as '+{name}'; keep one")
        if not keys:
            _check_top_level(name, new, value, at, base)
        if base is not None and new and name in base:
            raise ParamsError(f"{at}: '+{name}' adds '{path}', but {_bases(file)} already has it; "
                              "drop the '+' to change it")
        if base is not None and not new and name not in base:
            raise _unknown_key(name, path, at, file, top=not keys)
        below = base.get(name) if base is not None else None
        below = below if isinstance(below, dict) else None
        out[name] = _unmark(value, file, keys + (key,), below) if isinstance(value, dict) else value
    return out


def _bases(file: _File) -> str:
    return ", ".join(file.bases)


def _check_top_level(name: str, new: bool, value, at: _At, base: dict | None) -> None:
    """Reserved words are never parameters, and in a base file a misspelled one is refused."""
    if new and name in (*RESERVED, ORCH):
        raise ParamsError(f"{at}: '+{name}': '{name}' is reserved ({', '.join((*RESERVED, ORCH))}) and cannot be "
                          f"a parameter; write '{name}:' without the '+', or choose another name")
    word = _reserved_typo(name) if base is None and not new else None
    if word and _holds(word, value):
        raise ParamsError(f"{at}: unknown key '{name}', did you mean '{word}'? (to define a parameter "
                          f"named '{name}', write '+{name}:')")


def _unknown_key(name: str, path: str, at: _At, file: _File, top: bool) -> ParamsError:
    rule = f"a file that extends {_bases(file)} changes its parameters only"
    word = _reserved_typo(name) if top else None
    if word:
        return ParamsError(f"{at}: unknown key '{name}', did you mean '{word}'? ({rule}; to add a new "
                           f"parameter '{name}', write '+{name}:')")
    return ParamsError(f"{at}: unknown key '{path}' ({_did_you_mean(path, [file.base_values])}); {rule}: "
                       f"fix the spelling, or write '+{name}:' to add a new one")


def _reserved_typo(key) -> str | None:
    """The reserved word ``key`` looks like a misspelling of (another case, or a few edits), if any."""
    if not isinstance(key, str):
        return None
    low = key.lower()
    for word, edits in _TYPO_EDITS.items():
        if key == word:
            continue
        if word == "name":  # short: only "Name" or two letters swapped ("nmae"); "game: chess" is a parameter
            if low == word or (sorted(low) == sorted(word) and _distance(low, word) == 1):
                return word
        elif _distance(low, word) <= edits:
            return word
    return None


def _holds(word: str, value) -> bool:
    """Whether ``value`` is what the reserved ``word`` takes, which a parameter seldom is."""
    if word == "name":
        return isinstance(value, str)
    if word == "extends":
        files = [value] if isinstance(value, str) else value
        return isinstance(files, list) and bool(files) and all(
            isinstance(f, str) and f.endswith((".yaml", ".yml")) for f in files)
    return isinstance(value, dict) and bool(value) and (  # sweep: parameter paths -> lists
        any(isinstance(k, str) and "." in k for k in value)
        or all(isinstance(v, list) for v in value.values()))


def _distance(a: str, b: str) -> int:
    """Edit distance where swapping two adjacent letters is one edit (optimal string alignment)."""
    before, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], before[j - 2] + 1)
        before, prev = prev, cur
    return prev[-1]


# ------------------------------------------------------------------------------------ sweeps


def _parse_sweep(sweep, file: _File, values: dict) -> dict:
    """Validate ``sweep:`` (parameter path -> non-empty list; null or {} means no sweep) against the
    file's merged ``values``: a swept path must exist, a '+path' must not."""
    source = file.source
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise ParamsError(f"{source}: 'sweep' must map parameter paths to lists of values")
    out = {}
    for key, options in sweep.items():
        new = isinstance(key, str) and key.startswith(NEW)
        path = key[1:] if new else key
        if not isinstance(path, str) or not all(path.split(".")):
            raise ParamsError(f"{source}: sweep key {key!r} must be a dotted parameter path like train.lr")
        if not isinstance(options, list) or not options:
            raise ParamsError(f"{source}: sweep of '{key}' must be a non-empty list of values, "
                              f"e.g. {key}: [0.1, 0.01]")
        at = file.at(("sweep", key))
        if path in out:
            raise ParamsError(f"{at}: '{path}' is swept twice, as '{path}' and as '+{path}'; keep one")
        _check_swept(path, new, values, at)
        out[path] = _plain(options, source, path)
    return out


def _check_swept(path: str, new: bool, values: dict, at: _At) -> None:
    current = resolve(values, path)
    if new and current is not MISSING:
        raise ParamsError(f"{at}: sweep key '+{path}': '{path}' is already a parameter; "
                          "drop the '+' to sweep it")
    if not new and current is MISSING:
        raise ParamsError(f"{at}: sweep key '{path}' is not a parameter "
                          f"({_did_you_mean(path, [values])}); fix the spelling, or write "
                          f"'+{path}' to sweep a new parameter")
    parent = path.rpartition(".")[0]
    while parent and resolve(values, parent) is MISSING:
        parent = parent.rpartition(".")[0]
    node = resolve(values, parent)
    if parent and not isinstance(node, dict):
        raise ParamsError(f"{at}: cannot sweep '{path}': '{parent}' is a {type(node).__name__}, "
                          "not a mapping")


# ------------------------------------------------------------------------------- set names


def _set_name(raw_name, default: str, source: str) -> str:
    if raw_name is None:
        return default
    if not isinstance(raw_name, str) or not raw_name:
        raise ParamsError(f"{source}: 'name' must be a non-empty string")
    return raw_name


def _load_yaml_file(path: str, source: str, parse: Parse) -> list[_Unexpanded]:
    raw, values, sweep, sweep_source, orch = _load_yaml(path, source, parse)
    name = _set_name(raw.get("name"), _stem(path), source)
    return [_Unexpanded(name, values, source, sweep, sweep_source, orch)]


# ----------------------------------------------------------------------------- Python files


def _load_python_file(path: str, source: str) -> list[_Unexpanded]:
    """Run a .py parameter file and collect get_params(): a dict or a list of dicts."""
    import runpy

    if not os.path.isfile(path):
        raise ParamsError(f"parameter file {source} not found")
    try:
        namespace = runpy.run_path(path)
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
    return [_python_set(item, i, len(items), _stem(path), source) for i, item in enumerate(items)]


def _python_set(item: dict, index: int, count: int, stem: str, source: str) -> _Unexpanded:
    where = f"{source} (get_params()[{index}])"
    for key in ("extends", "sweep"):
        if key in item:
            raise ParamsError(f"{where}: '{key}' is only supported in YAML files; "
                              "return one dict per parameter set instead")
    default = stem if count == 1 else f"{stem}[{index}]"
    name = _set_name(item.get("name"), default, where)
    values = _plain({k: v for k, v in item.items() if k not in ("name", ORCH)}, where)
    orch = {}
    if ORCH in item:
        from .resources import check_orch_section

        orch = check_orch_section(item[ORCH], where)
    return _Unexpanded(name, values, source, {}, orch=orch)


def _load_file(path: str | os.PathLike, parse: Parse) -> list[_Unexpanded]:
    source = os.fspath(path)
    path = _named(source)
    if _suffix(path) == ".py":
        return _load_python_file(path, source)
    return _load_yaml_file(path, source, parse)


# Paths are strings here (os.path): a cached run does not import pathlib (~4 ms with urllib.parse).
def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _named(path: str) -> str:
    """`path` without trailing slashes, as Path(path) names it: `-p p.yaml/` reads p.yaml."""
    return path.rstrip("/") or path


def _suffix(path: str) -> str:
    """Path(path).suffix."""
    return _split_name(path)[1]


def _stem(path: str) -> str:
    """Path(path).stem."""
    return _split_name(path)[0]


def _split_name(path: str) -> tuple[str, str]:
    name = os.path.basename(path)  # (a _named path: no trailing slash)
    i = name.rfind(".")
    return (name[:i], name[i:]) if 0 < i < len(name) - 1 else (name, "")


# ------------------------------------------------------------------------------- overrides


def _parse_override(text: str) -> tuple[str, object, bool]:
    """Split "a.b=VALUE" (or "+a.b=VALUE", a new key) on the first '=' and parse VALUE as YAML
    (empty is null); gives (path, value, new)."""
    import yaml

    key, eq, raw = text.partition("=")
    key = key.strip()
    new = key.startswith(NEW)
    path = key[1:] if new else key
    if not eq or not path or not all(path.split(".")):
        raise ParamsError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. -S train.lr=0.1 "
                          "(or -S +train.wd=0.1 to add a new key)")
    try:
        value = yaml.load(raw, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {text!r}: the value is not valid YAML ({exc}); quote it") from None
    return path, _plain(value, f"--set {key}", path), new


def _apply_override(units: list[_Unexpanded], key: str, value, new: bool = False) -> None:
    """Set an existing key in every set that has it, or (``new``) add a key no set has to every set;
    unknown, already existing or swept keys are errors."""
    shown = f"{NEW}{key}" if new else key
    for unit in units:
        for swept in unit.sweep:
            if is_ignored(swept, [key]) or is_ignored(key, [swept]):
                what = f"{key} is swept" if swept == key else f"{key} overlaps the swept {swept}"
                raise ParamsError(f"{what} in {unit.sweep_source}; "
                                  "remove it from the sweep or drop the --set")
    hits = [u for u in units if resolve(u.values, key) is not MISSING]
    if new and hits:
        raise ParamsError(f"--set {shown}: '{key}' already exists in {hits[0].source}; "
                          f"drop the '+' to change it (-S {key}=...)")
    if new:
        for unit in units:
            _set_path(unit.values, key, _copy_plain(value), f"--set {shown} ({unit.source})", "add")
        return
    if not hits:
        hint = _did_you_mean(key, [u.values for u in units])
        raise ParamsError(f"--set {key}: no parameter set has '{key}' ({hint}); --set only changes "
                          f"existing parameters: fix the spelling, or add a new one with -S +{key}=...")
    for unit in hits:
        parent, _, leaf = key.rpartition(".")
        resolve(unit.values, parent)[leaf] = _copy_plain(value)


# ------------------------------------------------------------------------------- expansion


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


def _set_path(values: dict, key: str, value, source: str, verb: str = "sweep") -> None:
    """Set a key, creating missing parent mappings; an existing non-mapping parent is an error."""
    node = values
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            parent = ".".join(parts[: i + 1])
            raise ParamsError(f"{source}: cannot {verb} '{key}': '{parent}' is a "
                              f"{type(node).__name__}, not a mapping")
    node[parts[-1]] = value


def _expand(unit: _Unexpanded) -> list[ParamSet]:
    """One ParamSet per sweep combination (first key varies slowest), each with its own copy."""
    if not unit.sweep:
        return [ParamSet(unit.name, _copy_plain(unit.values), unit.source, unit.orch)]
    keys = list(unit.sweep)
    sets = []
    for combo in itertools.product(*(unit.sweep[k] for k in keys)):
        values = _copy_plain(unit.values)
        for key, value in zip(keys, combo):
            _set_path(values, key, _copy_plain(value), unit.source)
        label = ",".join(f"{k}={_format_value(v)}" for k, v in zip(keys, combo))
        sets.append(ParamSet(f"{unit.name}[{label}]", values, unit.source, unit.orch))
    return sets


def load_params(paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (), yaml_cache=None) -> list[ParamSet]:
    """Load parameter files in order, apply ``-S`` overrides, expand sweeps; set names are unique.
    `yaml_cache`: a parsecache.ParsedTexts that YAML files are parsed through (a run's cache has one)."""
    parsed = [_parse_override(text) for text in overrides]
    parse = _parse_yaml if yaml_cache is None else (lambda text: yaml_cache.load(text, _parse_yaml))
    units = [unit for path in paths for unit in _load_file(path, parse)]
    for key, value, new in parsed:
        _apply_override(units, key, value, new)
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
