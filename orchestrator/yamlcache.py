"""Parsed YAML parameter files, by content: a run re-reads its parameter files, but need not import
PyYAML (~100 M instructions, an eighth of a cached run of 200 stages) to parse a text it parsed
before. Keyed by the sha256 of the text itself (no stat signature, so no race: the same text
parses to the same value) and by the installed PyYAML's files (an upgrade or reinstall starts
afresh). Only values that JSON gives back exactly are kept (dicts with str keys, lists, str, int,
finite float, bool, None), each with a check of its JSON text; a text parsing to anything else (a
date, a set, bytes, NaN, a non-string key) is parsed every time. Session opens it in the cache
directory for the parameter loading."""

from __future__ import annotations

import json
import os

from .fsutil import json_exact, load_cache_file, save_cache_file
from .hashing import sha

#: how many parsed texts the file keeps (the newest)
KEPT = 256


class ParsedYaml:
    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self._version = _yaml_stamp()
        self._parsed = load_cache_file(path, self._version, "parsed") if self._version else {}
        self._changed = False

    def load(self, text: str, parse):
        """parse(text) (paramfiles._parse_yaml: PyYAML's safe loader), from the cache when this text
        was parsed before."""
        digest = sha.new(text.encode("utf-8", "surrogatepass")).hexdigest()
        found = self._parsed.get(digest)
        # kept as [JSON text, its check]: every load gets its own objects to change, and a text damaged
        # in place (a flipped digit would still be JSON: another parameter value) is parsed again
        if type(found) is list and len(found) == 2 and type(found[0]) is str and found[1] == _check(found[0]):
            try:
                return json.loads(found[0])
            except (ValueError, RecursionError):
                pass
        value = parse(text)  # a YAMLError is the caller's
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
        if self._changed and self.path is not None and os.path.isdir(os.path.dirname(os.fspath(self.path))):
            save_cache_file(self.path, {"version": self._version, "parsed": self._parsed})
            self._changed = False


def _check(text: str) -> str:
    """What a kept JSON text must hash to (damage, not forgery: whoever can write the cache can write
    its entries too)."""
    return sha.new(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _yaml_stamp() -> str | None:
    """The installed PyYAML's package files (path, size, mtime, inode), found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec("yaml")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    parts = []
    directory = os.path.dirname(spec.origin)
    try:
        for name in sorted(os.listdir(directory)):
            if name.endswith((".py", ".so", ".pyd")):
                st = os.stat(os.path.join(directory, name))
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except OSError:
        return None
    return "2 " + sha.new(f"{directory}\n{chr(10).join(parts)}".encode()).hexdigest()
