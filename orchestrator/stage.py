"""@stage and @aggregate: validate a declaration and wrap the function in a Stage.

A Stage records metadata only. Calling it inside `run(record)` adds a node to the record's graph
(nothing executes); the plain function stays available as `stage.fn` for unit tests.
"""

from __future__ import annotations

import re

from .cachers import Cacher, Lazy, as_cacher
from .errors import PlanningError, StageDefinitionError

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

# InputSpec and OutputSpec are written out rather than dataclasses: defining a frozen dataclass costs
# ~3.5 M instructions at import (its methods are generated and compiled), on every run.


class InputSpec:
    """A declared input (immutable, compared and hashed by its fields)."""

    __slots__ = ("name", "lazy")

    def __init__(self, name: str, lazy: bool):
        self.name, self.lazy = name, lazy

    def __eq__(self, other):
        return (self.name, self.lazy) == (other.name, other.lazy) if other.__class__ is InputSpec else NotImplemented

    def __hash__(self) -> int:
        return hash((self.name, self.lazy))

    def __repr__(self) -> str:
        return f"InputSpec(name={self.name!r}, lazy={self.lazy!r})"


class OutputSpec:
    """A declared output (immutable, compared and hashed by its fields)."""

    __slots__ = ("name", "lazy", "cacher")

    def __init__(self, name: str, lazy: bool, cacher: Cacher | None):
        self.name, self.lazy, self.cacher = name, lazy, cacher

    def _fields(self) -> tuple:
        return (self.name, self.lazy, self.cacher)

    def __eq__(self, other):
        return self._fields() == other._fields() if other.__class__ is OutputSpec else NotImplemented

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"OutputSpec(name={self.name!r}, lazy={self.lazy!r}, cacher={self.cacher!r})"


class Stage:
    """A declared stage. `kind` is "stage" (one node per record) or "aggregate" (one node over records)."""

    def __init__(self, fn: Callable, *, kind: str, inputs, outputs, cachers, version, ignore, distributed,
                 partial: bool = False, resources: dict | None = None):
        self.fn = fn
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        self.kind = kind
        self.name = fn.__name__
        self.id = f"{fn.__module__}:{fn.__qualname__}"
        where = f"@{kind} {fn.__qualname__} ({_source_file(fn)})"
        self.inputs = _input_specs(inputs, where)
        self.outputs, self.output_names = _output_specs(outputs, cachers, where)  # (frozen specs: `cached` once)
        self._cached = bool(self.outputs) and all(o.cacher is not None for o in self.outputs)
        self.version = version
        self.ignore = tuple(_str_list(ignore, "ignore", where))
        self.distributed = bool(distributed)
        self.partial = bool(partial)  # aggregates: run on the sets that succeeded (record.failed_sets)
        # What a cluster job of this stage asks for (orchestrator.resources): never part of the key.
        self.resources = {}
        if resources is not None:  # imported only then: `orch --help` imports what it always did
            from .resources import check as check_resources

            self.resources = check_resources(resources, where)
        _check_signature(fn, self.inputs, where)

    @property
    def cached(self) -> bool:
        """True when every output has a cacher (otherwise the stage always runs)."""
        return self._cached

    def declaration(self) -> tuple:
        """The part of the declaration that changes what a node computes or stores (hashed into the key)."""
        decl = (
            self.kind,
            tuple((i.name, i.lazy) for i in self.inputs),
            tuple((o.name, o.cacher.identity() if o.cacher else None) for o in self.outputs),
        )
        return decl + (("partial",) if self.partial else ())  # (unchanged for every other declaration)

    def __call__(self, record_or_records):
        Record = _Record or _record_class()
        if type(record_or_records) is Record and self.kind == "stage":  # the common case, in one test
            return record_or_records._graph_of(self).add_stage(self, record_or_records)
        if self.kind == "aggregate":
            records = list(record_or_records) if not isinstance(record_or_records, Record) else [record_or_records]
            if not records or not all(isinstance(r, Record) for r in records):
                raise PlanningError(f"aggregate {self.name} must be called with the list of records passed to aggregate(records)")
            return records[0]._graph_of(self).add_aggregate(self, records)
        if not isinstance(record_or_records, Record):
            raise PlanningError(
                f"stage {self.name} must be called with a Record inside run(record); "
                f"to run its function directly (e.g. in a unit test) call {self.name}.fn(record, ...)"
            )
        return record_or_records._graph_of(self).add_stage(self, record_or_records)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.id}>"


_Record = None  # record.Record, imported by the first call of a stage (`orch --help` does not import it)


def _record_class():
    global _Record
    from .record import Record

    _Record = Record
    return Record


def stage(
    inputs: Sequence[str | Lazy] = (),
    outputs: Sequence[str | Lazy] = (),
    cachers: Sequence[Any] | Any = None,
    *,
    version: str | int | None = None,
    ignore: Sequence[str] = (),
    distributed: bool = False,
    resources: dict | None = None,
):
    """Declare a stage: `fn(record, **inputs)` returns one value per output (a tuple for several).

    resources: what a cluster job of this stage asks for (`--executor slurm`), e.g. {"cpus": 8,
    "mem": "32G", "gpus": 1, "time": "04:00:00", "partition": "gpu"}; never part of the cache key."""
    return _decorator("stage", inputs, outputs, cachers, version, ignore, distributed, resources=resources)


def aggregate(
    inputs: Sequence[str | Lazy] = (),
    outputs: Sequence[str | Lazy] = (),
    cachers: Sequence[Any] | Any = None,
    *,
    version: str | int | None = None,
    ignore: Sequence[str] = (),
    partial: bool = False,
    resources: dict | None = None,
):
    """Declare an aggregate: one node over many records; each input is {parameter-set name: value}.

    partial=True: when some parameter sets fail (or are skipped), run anyway on the sets that
    succeeded; `record.failed_sets` says which did not ({set: why}). By default an aggregate
    needs every set and is skipped when one fails."""
    return _decorator("aggregate", inputs, outputs, cachers, version, ignore, False, partial, resources)


def _decorator(kind, inputs, outputs, cachers, version, ignore, distributed, partial=False, resources=None):
    if callable(inputs) and not isinstance(inputs, (list, tuple, str)):
        raise StageDefinitionError(f"use @{kind}(...) with parentheses, e.g. @{kind}(outputs=['x'])")
    if version is not None and not isinstance(version, (str, int)):
        raise StageDefinitionError(f"@{kind}(version=...) must be a string or an integer, got {version!r}")

    def wrap(fn):
        if not callable(fn) or not hasattr(fn, "__code__"):
            raise StageDefinitionError(f"@{kind} decorates a plain function, got {fn!r}")
        return Stage(fn, kind=kind, inputs=inputs, outputs=outputs, cachers=cachers,
                     version=version, ignore=ignore, distributed=distributed, partial=partial, resources=resources)

    return wrap


def _source_file(fn) -> str:
    return getattr(fn.__code__, "co_filename", "?")


def _str_list(value, what, where) -> list:
    if isinstance(value, (str, Lazy)):
        value = [value]
    try:
        items = list(value or ())
    except TypeError:
        raise StageDefinitionError(f"{where}: {what}= must be a list, got {value!r}") from None
    return items


def _input_specs(inputs, where) -> tuple[InputSpec, ...]:
    specs, names = [], set()
    for item in _str_list(inputs, "inputs", where):
        lazy = isinstance(item, Lazy)
        name = item.name if lazy else item
        if not isinstance(name, str) or not name.isidentifier():
            raise StageDefinitionError(
                f"{where}: input {name!r} must be a Python identifier (it is passed as a keyword argument)"
            )
        if name in names:
            raise StageDefinitionError(f"{where}: input {name!r} is declared twice")
        names.add(name)
        specs.append(InputSpec(name, lazy))
    return tuple(specs)


_OUTPUT_NAME = re.compile(r"\w[\w.-]*")  # word characters (any script), then also . and -


def _output_specs(outputs, cachers, where) -> tuple[tuple[OutputSpec, ...], frozenset[str]]:
    """The output specs, in order, and their names."""
    names = _str_list(outputs, "outputs", where)
    if cachers is None:
        cacher_list = [None] * len(names)
    elif isinstance(cachers, (list, tuple)):
        cacher_list = list(cachers)
        if len(cacher_list) != len(names):
            raise StageDefinitionError(
                f"{where}: {len(names)} outputs but {len(cacher_list)} cachers; give one cacher per output "
                f"(None for an output kept in memory only)"
            )
    else:
        cacher_list = [cachers] * len(names)
    specs, seen = [], set()
    for item, c in zip(names, cacher_list):
        lazy = isinstance(item, Lazy)
        name = item.name if lazy else item
        if not isinstance(name, str) or not _OUTPUT_NAME.fullmatch(name) or ".." in name:
            raise StageDefinitionError(
                f"{where}: output name {name!r} must be letters, digits, '_', '.' or '-' (no '/', '..' or "
                f"control characters: it names files of `orch get` and staging paths); a consumer takes it as "
                f"an input only if it is a Python identifier, e.g. 'train_data'")
        if name in seen:
            raise StageDefinitionError(f"{where}: output {name!r} is declared twice")
        seen.add(name)
        cacher = as_cacher(c, f"{where} output {name!r}")
        if lazy and cacher is None:
            raise StageDefinitionError(f"{where}: Lazy output {name!r} needs a cacher (it is dropped from memory once saved)")
        specs.append(OutputSpec(name, lazy, cacher))
    return tuple(specs), frozenset(seen)


def _check_signature(fn, inputs, where) -> None:
    """Inputs are passed by keyword, so the function's parameters must be named after them."""
    code = _plain_code(fn)
    if (code is not None and not fn.__defaults__ and code.co_argcount
            and not (code.co_posonlyargcount or code.co_kwonlyargcount or code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS))
            and set(code.co_varnames[1:code.co_argcount]) == {i.name for i in inputs}):
        return  # the usual stage, `def f(record, a, b)` for inputs a and b: what the checks below accept
    params = _parameters(fn)
    if params is None:
        return
    if not params or params[0][1] not in (_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD):
        raise StageDefinitionError(f"{where}: the function's first parameter must be the record")
    by_keyword = (_POSITIONAL_OR_KEYWORD, _KEYWORD_ONLY)
    rest = {name for name, kind, _ in params[1:] if kind in by_keyword}
    has_var_kw = any(kind == _VAR_KEYWORD for _, kind, _ in params)
    missing = [i.name for i in inputs if i.name not in rest and not has_var_kw]
    required = {name for name, kind, default in params[1:] if not default and kind in by_keyword}
    extra = sorted(required - {i.name for i in inputs})
    if missing or extra:
        declared = [i.name for i in inputs]
        raise StageDefinitionError(
            f"{where}: declares inputs {declared} but the function takes "
            f"({', '.join(name for name, _, _ in params)}); name its parameters after the inputs, as in "
            f"def {fn.__name__}(record, {', '.join(declared)})"
        )


#: Parameter kinds, as inspect.Parameter numbers them (inspect is imported only for unusual callables).
_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD, _VAR_POSITIONAL, _KEYWORD_ONLY, _VAR_KEYWORD = range(5)
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08


def _parameters(fn) -> list[tuple[str, int, bool]] | None:
    """(name, kind, has a default) of each parameter, as inspect.signature(fn) gives them; None where
    it cannot tell. A plain function is read from its code object (inspect.signature costs ~1/4 of a
    stage declaration, and importing inspect more than 200 of them); anything else (a wrapper with
    __wrapped__ or __signature__, a partial, a callable object, a builtin) asks inspect."""
    code = _plain_code(fn)
    if code is None:
        return _inspected_parameters(fn)
    names = code.co_varnames
    positional, posonly, kwonly = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
    defaults = len(fn.__defaults__ or ())
    kwdefaults = fn.__kwdefaults__ or {}
    params = [(names[i], _POSITIONAL_ONLY if i < posonly else _POSITIONAL_OR_KEYWORD, i >= positional - defaults)
              for i in range(positional)]
    if code.co_flags & _CO_VARARGS:
        params.append((names[positional + kwonly], _VAR_POSITIONAL, False))
    params += [(names[i], _KEYWORD_ONLY, names[i] in kwdefaults) for i in range(positional, positional + kwonly)]
    if code.co_flags & _CO_VARKEYWORDS:
        params.append((names[positional + kwonly + bool(code.co_flags & _CO_VARARGS)], _VAR_KEYWORD, False))
    return params


def _plain_code(fn):
    """The code object of a plain function whose signature is its code's (no __wrapped__ or
    __signature__ for inspect to follow instead), else None."""
    code = getattr(fn, "__code__", None)
    if type(fn) is not _FunctionType or code is None or "__wrapped__" in fn.__dict__ or "__signature__" in fn.__dict__:
        return None
    return code


def _inspected_parameters(fn) -> list[tuple[str, int, bool]] | None:
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [(p.name, int(p.kind), p.default is not p.empty) for p in sig.parameters.values()]


_FunctionType = type(_source_file)
