"""Lazy artifacts: `Lazy("name")` in a declaration, and the handle a stage receives for a lazy input."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import StageDefinitionError

if TYPE_CHECKING:
    from ..cachers import Cacher


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

    @property
    def metadata(self) -> dict | None:
        """What the cacher recorded when it saved the artifact (e.g. a model's class)."""
        return self._metadata

    def load(self, **kwargs):
        """Load with the artifact's cacher; keyword options go to it (e.g. device="cpu", mmap_mode="r")."""
        if self._cacher is None:
            raise StageDefinitionError(f"artifact {self.name!r} has no cacher to load it with")
        return self._cacher.load(self.path, self._metadata, **kwargs)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"LazyArtifact({self.name!r}, path={self.path!r})"
