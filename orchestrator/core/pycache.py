"""Project code runs as orch hashed it: checked-hash bytecode (PEP 552) for project files.

Python trusts a `.pyc` whose header matches the source's mtime in whole seconds and its size. An
edit within the same second as the last compile that keeps the size (`K = 2` -> `K = 3` by a sweep
script's `sed -i`) leaves the old bytecode valid: orch would fingerprint the new source, run the old
code and store its result under the new key, a wrong cache hit for every later run. So project
modules (hashing.coderoots) are imported through a loader that trusts only *checked-hash* pycs,
which record a hash of the source they were compiled from and are validated against it at every
import; any other pyc is ignored and replaced by one. Because the validation is in the pyc itself,
every later import by any interpreter of the same version checks it too (pool workers, MPI ranks,
external scripts). Cost: reading and hashing the source of each project module at import (a few
microseconds per KB); installed packages and the standard library are not touched.

External scripts run in their own interpreter: before launching one, `check_bytecode` gives the
project modules it imports checked-hash pycs (or removes stale ones where bytecode is not written).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys

from ..hashing.coderoots import CodeRoots

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Iterable

_CHECKED_HASH = (0b11).to_bytes(4, "little")  # PEP 552 flags: hash-based, check_source
_HEADER = 16


def _checked_pyc(source: bytes, data: bytes | None):
    """The code object in `data` if it is a checked-hash pyc of exactly `source`, else None."""
    if (data is None or len(data) < _HEADER or data[:4] != importlib.util.MAGIC_NUMBER
            or data[4:8] != _CHECKED_HASH or data[8:16] != importlib.util.source_hash(source)):
        return None
    try:
        return marshal.loads(memoryview(data)[_HEADER:])
    except (ValueError, EOFError, TypeError):
        return None


def _pyc_bytes(source: bytes, code) -> bytes:
    return importlib.util.MAGIC_NUMBER + _CHECKED_HASH + importlib.util.source_hash(source) + marshal.dumps(code)


class CheckedSourceLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader that, for a project file, uses bytecode only when it was compiled from the
    very source on disk. Other files (installed packages, the standard library) load as usual.
    `roots` is set on the subclass `install` makes."""

    roots: CodeRoots | None = None

    def get_code(self, fullname):
        source_path = self.get_filename(fullname)
        if self.roots is None or self.roots.root_of(os.path.realpath(source_path)) is None:
            return super().get_code(fullname)
        source = self.get_data(source_path)
        try:
            cache = importlib.util.cache_from_source(source_path)
        except NotImplementedError:
            cache = None
        if cache is not None:
            try:
                cached = self.get_data(cache)
            except OSError:
                cached = None
            code = _checked_pyc(source, cached)
            if code is not None:
                return code
        code = self.source_to_code(source, source_path)
        if cache is not None and not sys.dont_write_bytecode:
            self.set_data(cache, _pyc_bytes(source, code))  # atomic; quietly skipped where unwritable
        return code


def install(roots: CodeRoots) -> None:
    """From now on, in this process, import every source module through CheckedSourceLoader bound
    to `roots`. Decided per file, not per sys.path entry, so a project package reached through a
    symlink in site-packages is checked too (the cost for other files: one realpath per import)."""
    sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "orch_pycache", False)]
    loader = type("CheckedSourceLoader", (CheckedSourceLoader,), {"roots": roots})
    hook = importlib.machinery.FileFinder.path_hook(
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (loader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )
    hook.orch_pycache = True
    sys.path_hooks.insert(0, hook)
    sys.path_importer_cache.clear()  # finders made before use the old loaders: made again on demand


def check_bytecode(sources: Iterable[str | os.PathLike], write: bool = True) -> None:
    """Before another interpreter of this Python version imports `sources` (an external script's
    project modules): give each a checked-hash pyc of its current source, or, where bytecode is not
    written (`write=False`, PYTHONDONTWRITEBYTECODE), remove a pyc that is not one."""
    for src in sources:
        path = os.fspath(src)
        try:
            cache = importlib.util.cache_from_source(path)
            with open(path, "rb") as f:
                source = f.read()
        except (OSError, NotImplementedError, ValueError):
            continue
        try:
            with open(cache, "rb") as f:
                cached = f.read()
        except OSError:
            cached = None
        if _checked_pyc(source, cached) is not None:
            continue
        if write:
            try:
                code = compile(source, path, "exec", dont_inherit=True)
            except (SyntaxError, ValueError):
                continue  # the script reports it when it imports the module
            loader = importlib.machinery.SourceFileLoader("_orch_pyc", path)
            loader.set_data(cache, _pyc_bytes(source, code))
        elif cached is not None:
            try:
                os.unlink(cache)
            except OSError:
                pass
