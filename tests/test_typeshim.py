"""orchestrator.typeshim: its NamedTuple makes the class typing.NamedTuple makes (orch's modules use it so
that a cached run does not import typing)."""

from __future__ import annotations

import pickle
import typing

import pytest

from orchestrator import typeshim
from orchestrator.store.entries import ObjectInfo


def _define(base):
    class Point(base):
        """A point."""

        x: int
        y: int = 0
        label: str | None = None

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

        @classmethod
        def origin(cls) -> Point:
            return cls(0)

    return Point


def test_namedtuple_classes_are_typings():
    ours, theirs = _define(typeshim.NamedTuple), _define(typing.NamedTuple)
    assert ours.__bases__ == theirs.__bases__ == (tuple,)
    assert ours._fields == theirs._fields and ours._field_defaults == theirs._field_defaults
    assert (ours.__name__, ours.__qualname__, ours.__module__, ours.__doc__) == \
           (theirs.__name__, theirs.__qualname__, theirs.__module__, theirs.__doc__)
    assert list(ours.__annotations__) == list(theirs.__annotations__)
    p, q = ours(3, -4), theirs(3, -4)
    assert p == q == (3, -4, None) and repr(p) == repr(q)
    assert p.norm1() == 7 and ours.origin() == (0, 0, None) and type(ours.origin()) is ours
    assert p._replace(label="a") == (3, -4, "a") and type(p._replace(y=1)) is ours
    assert p._asdict() == q._asdict() and not hasattr(p, "__dict__")


def test_namedtuple_refuses_what_typing_refuses():
    with pytest.raises(TypeError):
        class Bad(typeshim.NamedTuple):
            x: int = 0
            y: int
    with pytest.raises(AttributeError):
        class Replaced(typeshim.NamedTuple):
            x: int

            def _replace(self):
                return self


def test_store_records_pickle_by_name():
    info = ObjectInfo("0" * 64, 1, "file")
    assert pickle.loads(pickle.dumps(info)) == info and type(pickle.loads(pickle.dumps(info))) is ObjectInfo
