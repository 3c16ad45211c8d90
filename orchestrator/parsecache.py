"""Parsed texts, by content: a run re-reads its parameter files and the project's pyproject.toml, but
need not import PyYAML (~100 M instructions, an eighth of a cached run of 200 stages) or tomllib
(~40 M: it imports typing and datetime) to parse a text it parsed before. Keyed by the sha256 of the
text itself (no stat signature, so no race: the same text parses to the same value) and by a stamp
of the parser (the installed PyYAML's files: an upgrade or reinstall starts afresh). Only values
that JSON gives back exactly are kept (dicts with str keys, lists, str, int, finite float, bool,
None), each with a check of its JSON text; a text parsing to anything else (a date, a set, bytes,
NaN, a non-string key) is parsed every time. Session opens one per parser in the cache directory."""

from __future__ import annotations

import json
import os
import sys

from .fsutil import json_exact, load_cache_file, save_cache_file
from .hashing import sha

#: how many parsed texts a file keeps (the newest)
KEPT = 256


class ParsedTexts:
    def __init__(self, path: str | os.PathLike | None, stamp: str | None):
        """`stamp`: what the parser is (None: it cannot be told, so nothing is kept)."""
        self.path = path
        self._version = stamp
        self._parsed: dict | None = None  # read at the first load: a project without pyproject.toml never does
        self._changed = False

    def load(self, text: str, parse):
        """parse(text), from the cache when this text was parsed before; what parse raises is the caller's."""
        if self._parsed is None:
            self._parsed = load_cache_file(self.path, self._version, "parsed") if self._version else {}
        digest = sha.new(text.encode("utf-8", "surrogatepass")).hexdigest()
        found = self._parsed.get(digest)
        # kept as [JSON text, its check]: every load gets its own objects to change, and a text damaged
        # in place (a flipped digit would still be JSON: another parameter value) is parsed again
        if type(found) is list and len(found) == 2 and type(found[0]) is str and found[1] == _check(found[0]):
            try:
                return json.loads(found[0])
            except (ValueError, RecursionError):
                pass
        value = parse(text)
        if self._version and json_exact(value):
            try:
                text = json.dumps(value, separators=(",", ":"))
            except ValueError:  # an int past Python's digit limit for str (sys.set_int_max_str_digits)
                return value
            self._parsed.pop(digest, None)
            self._parsed[digest] = [text, _check(text)]
            while len(self._parsed) > KEPT:
                del self._parsed[next(iter(self._parsed))]
            self._changed = True
        return value

    def save(self) -> None:
        """Write what was parsed anew; not before the cache directory exists (a first run saves once it made it)."""
        if self._changed and self.path is not None and os.path.isdir(os.path.dirname(os.fspath(self.path))):
            save_cache_file(self.path, {"version": self._version, "parsed": self._parsed})
            self._changed = False


def yaml_texts(path: str | os.PathLike | None) -> ParsedTexts:
    """Parameter files (paramfiles: PyYAML's safe loader), in `path` (yaml-cache.json)."""
    stamp = _package_stamp("yaml")
    return ParsedTexts(path, None if stamp is None else "2 " + stamp)  # "2": kept texts carry a check


def toml_texts(path: str | os.PathLike | None) -> ParsedTexts:
    """pyproject.toml's [tool.orch] (hashing.coderoots), in `path` (toml-cache.json): the standard
    library's tomllib, or tomli on Python 3.10."""
    if sys.version_info >= (3, 11):
        stamp: str | None = f"tomllib {sys.version}"
    else:
        stamp = _package_stamp("tomli")
    return ParsedTexts(path, None if stamp is None else "1 " + stamp)


def _check(text: str) -> str:
    """What a kept JSON text must hash to (damage, not forgery: whoever can write the cache can write
    its entries too)."""
    return sha.new(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _package_stamp(name: str) -> str | None:
    """An installed package's files (path, size, mtime, inode), found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    parts = []
    directory = os.path.dirname(spec.origin)
    try:
        for entry in sorted(os.listdir(directory)):
            if entry.endswith((".py", ".so", ".pyd")):
                st = os.stat(os.path.join(directory, entry))
                parts.append(f"{entry}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except OSError:
        return None
    return sha.new(f"{directory}\n{chr(10).join(parts)}".encode()).hexdigest()
