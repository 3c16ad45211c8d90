"""Cachers turn a stage output into a file in the store and back.

A cacher is small and stateless: `save(obj, path) -> metadata` writes the object to `path` (the
runner hashes and moves it into the store) and returns JSON-able metadata that comes back to
`load(path, metadata)`. Its identity (class and configuration) is part of the node's cache key, so
switching cachers never loads an object with the wrong reader.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import StageDefinitionError


class Cacher:
    """Base class: subclass and implement save/load; set `extension` for readable object names."""

    extension = ""

    def save(self, obj: Any, path: str) -> dict | None:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, path: str, metadata: dict | None = None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def config(self) -> Any:
        """JSON-able settings that change what save() writes; part of the cache key."""
        return None

    def identity(self) -> tuple:
        cls = type(self)
        return (f"{cls.__module__}:{cls.__qualname__}", self.config())

    def __repr__(self) -> str:
        return type(self).__name__


class PickleCacher(Cacher):
    extension = ".pkl"

    def __init__(self, protocol: int = 5):
        self.protocol = protocol

    def config(self):
        return {"protocol": self.protocol}

    def save(self, obj, path):
        import pickle

        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=self.protocol)
        return None

    def load(self, path, metadata=None):
        import pickle

        with open(path, "rb") as f:
            return pickle.load(f)


class JsonCacher(Cacher):
    extension = ".json"

    def __init__(self, indent: int | None = 1):
        self.indent = indent

    def config(self):
        return {"indent": self.indent}

    def save(self, obj, path):
        import json

        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=self.indent, allow_nan=True)
        return None

    def load(self, path, metadata=None):
        import json

        with open(path, encoding="utf-8") as f:
            return json.load(f)


class Lazy:
    """Marks an input or output name as lazy.

    As an output: saved right away and dropped from memory. As an input: the stage receives a
    `LazyArtifact` handle (`.path`, `.load()`) and nothing is loaded unless it asks.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise StageDefinitionError(f"Lazy() takes an artifact name, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Lazy({self.name!r})"


class LazyArtifact:
    """What a stage receives for a `Lazy(name)` input: the stored file, loaded only on demand."""

    __slots__ = ("name", "path", "_cacher", "_metadata")

    def __init__(self, name: str, path: str, cacher: Cacher | None, metadata: dict | None):
        self.name = name
        self.path = os.fspath(path)
        self._cacher = cacher
        self._metadata = metadata

    def load(self, **kwargs):
        if self._cacher is None:
            raise StageDefinitionError(f"artifact {self.name!r} has no cacher to load it with")
        return self._cacher.load(self.path, self._metadata, **kwargs) if kwargs else self._cacher.load(
            self.path, self._metadata
        )

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"LazyArtifact({self.name!r}, path={self.path!r})"


def as_cacher(c: Any, where: str) -> Cacher | None:
    """Accept a Cacher subclass, an instance, or None (memory only)."""
    if c is None:
        return None
    if isinstance(c, type) and issubclass(c, Cacher):
        return c()
    if isinstance(c, Cacher):
        return c
    raise StageDefinitionError(
        f"{where}: {c!r} is not a cacher; use a Cacher subclass such as PickleCacher, an instance of one, or None"
    )
