"""typing's names that run when orch's modules are imported, without importing typing (12 M instructions
at every start): a type checker sees typing's own (`if TYPE_CHECKING: from typing import ...`).

`class X(NamedTuple)` makes what typing.NamedTuple makes (a namedtuple with the class body's
methods and defaults, pickled by its module and name), minus the check of each annotation, which
also turns every string annotation into a compiled ForwardRef.
"""

from collections import namedtuple

#: what a NamedTuple's class body may not set (typing._prohibited)
_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                         "_make", "_replace", "_asdict", "_source"})
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})


class _NamedTupleMeta(type):
    def __new__(mcls, typename, bases, ns):
        if bases != (NamedTuple,):
            raise TypeError("can only inherit from NamedTuple")
        fields = list(ns.get("__annotations__", {}))
        defaults = [name for name in fields if name in ns]
        if defaults != fields[len(fields) - len(defaults):]:
            raise TypeError(f"{typename}: a field without a default follows one with a default")
        cls = namedtuple(typename, fields, defaults=[ns[name] for name in defaults], module=ns["__module__"])
        cls.__annotations__ = cls.__new__.__annotations__ = dict(ns.get("__annotations__", {}))
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
            if key not in _SPECIAL and key not in fields:
                setattr(cls, key, value)
        return cls


NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})


def overload(fn):
    """typing.overload for a type checker; at run time the definition that follows replaces it."""
    return fn
