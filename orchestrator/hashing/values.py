"""Values: the canonical, tagged encoding behind every key, parameter hash and trace.

Every digest here ends up in cache keys that users keep on disk, so the encoding is versioned
(VALUE_PREFIX) and pinned by golden tests (tests/test_hashing.py): changing it silently
invalidates every cache.
"""

from __future__ import annotations

import struct

from . import sha

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any

#: Prefix of every value hash; bump it only together with a deliberate change of the encoding.
VALUE_PREFIX = b"orch-value-v1\0"
#: Deeper nesting than this is refused (a cycle, or data that has no business in a key).
MAX_DEPTH = 200


def encode(value: Any) -> bytes:
    """Canonical bytes of a value: every item is type tag + 8-byte length + payload, so no two
    different values (True/1/1.0, list/tuple, ("ab","c")/("a","bc")) can share an encoding."""
    try:
        return _enc(value, 0)
    except _Unencodable:
        path, reason = _locate(value, ()) or ((), "cannot encode the value")
        raise TypeError(f"{reason} at {_where(path)}") from None


def hash_value(value: Any) -> str:
    """sha256 of the versioned canonical encoding: the hash of every key, parameter and trace."""
    return sha.new(VALUE_PREFIX + encode(value)).hexdigest()


def hash_bytes(data: bytes) -> str:
    """Plain sha256, so a stored object's hash equals `sha256sum` of its file (OpenSSL's: contents can
    be large, hashing.sha)."""
    return sha.use_openssl()(data).hexdigest()


class _Unencodable(Exception):
    """Raised deep inside _enc; encode() then finds where and why (kept off the fast path)."""


_BASES = (type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset)
#: Tag + 8-byte big-endian payload length in one C call (the frame of every item).
_HEAD = struct.Struct(">cQ").pack


def _enc(v: Any, depth: int) -> bytes:
    """The encoding of `v`. The most common types (str, tuple, list, int, dict) are tested first,
    by identity, and each frame is built in one struct call: hashing every node key of a cached
    run goes through here (the bytes are pinned by the golden tests)."""
    t = type(v)
    if t is str:  # surrogatepass: undecodable file names (surrogateescape) still hash
        p = v.encode("utf-8", "surrogatepass")
        return _HEAD(b"s", len(p)) + p
    if t is tuple or t is list:
        if depth >= MAX_DEPTH:
            raise _Unencodable
        depth += 1
        parts = []
        for x in v:  # str items framed here: a call per item would double the cost of a tuple of names
            if type(x) is str:
                x = x.encode("utf-8", "surrogatepass")
                parts.append(_HEAD(b"s", len(x)))
                parts.append(x)
            elif x is None:
                parts.append(_NONE)
            else:
                parts.append(_enc(x, depth))
        p = b"".join(parts)
        return _HEAD(b"t" if t is tuple else b"l", len(p)) + p
    if t is int:
        p = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        return _HEAD(b"i", len(p)) + p
    if t is dict:  # entries sorted by the encoded key: independent of insertion order
        if depth >= MAX_DEPTH:
            raise _Unencodable
        depth += 1
        items = []
        for k, val in v.items():  # str keys framed here, as str items of a tuple are
            if type(k) is str:
                k = k.encode("utf-8", "surrogatepass")
                items.append((_HEAD(b"s", len(k)) + k, val))
            else:
                items.append((_enc(k, depth), val))
        items.sort(key=_first)
        p = b"".join([ek + _enc(val, depth) for ek, val in items])
        return _HEAD(b"d", len(p)) + p
    if t is float:  # exact; every NaN is the same value for caching purposes
        p = b"nan" if v != v else v.hex().encode()
        return _HEAD(b"f", len(p)) + p
    if v is None:
        return _NONE
    if t is bool:
        return b"b" + _ONE + (b"\x01" if v else b"\x00")
    return _enc_other(v, t, depth)


def _enc_other(v: Any, t: type, depth: int) -> bytes:
    """bytes, sets, and subclasses of the plain types (IntEnum, namedtuple, a str Enum) encoded as
    their base, through the same operations on `v` as ever (a str Enum's value, not its __str__)."""
    if t not in _BASES:
        t = next((b for b in _BASES[1:] if isinstance(v, b)), None)  # bool before int: True != 1
    if t is str:
        p = v.encode("utf-8", "surrogatepass")
        return _HEAD(b"s", len(p)) + p
    if t is int:
        p = int(v).to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        return _HEAD(b"i", len(p)) + p
    if t is float:
        p = b"nan" if v != v else float(v).hex().encode()
        return _HEAD(b"f", len(p)) + p
    if t is bytes or t is bytearray:
        p = bytes(v)
        return _HEAD(b"y", len(p)) + p
    if t is None or depth >= MAX_DEPTH:
        raise _Unencodable
    depth += 1
    if t is list or t is tuple:
        p = b"".join([_enc(x, depth) for x in v])
        return _HEAD(b"l" if t is list else b"t", len(p)) + p
    if t is dict:
        items = sorted([(_enc(k, depth), val) for k, val in v.items()], key=_first)
        p = b"".join([ek + _enc(val, depth) for ek, val in items])
        return _HEAD(b"d", len(p)) + p
    # set and frozenset share a tag: {1} == frozenset({1}) in Python too
    p = b"".join(sorted([_enc(x, depth) for x in v]))
    return _HEAD(b"e", len(p)) + p


def _first(item: tuple) -> bytes:
    return item[0]


_ZERO = (0).to_bytes(8, "big")
_ONE = (1).to_bytes(8, "big")
_NONE = b"N" + _ZERO


def _locate(v: Any, path: tuple) -> tuple[tuple, str] | None:
    """Slow path for the error message: where the first unencodable item is, and why."""
    if isinstance(v, (dict, list, tuple, set, frozenset)) and len(path) >= MAX_DEPTH:
        return path, f"value too deeply nested (more than {MAX_DEPTH} levels)"
    if isinstance(v, dict):
        subs = [(k, (1, k)) for k in v] + [(val, (0, k)) for k, val in v.items()]
    elif isinstance(v, (list, tuple)):
        subs = [(x, (0, i)) for i, x in enumerate(v)]
    elif isinstance(v, (set, frozenset)):
        subs = [(x, (2, None)) for x in v]
    elif isinstance(v, _BASES):
        return None
    else:
        t = type(v)
        name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        return path, f"cannot hash a value of type {name}"
    return next(filter(None, (_locate(x, path + (seg,)) for x, seg in subs)), None)


def _where(path: tuple) -> str:
    """A location like ['train']['opt'] (long paths shortened)."""
    fmt = {0: "[{!r}]", 1: "(key {!r})", 2: "{{set element}}"}
    text = "".join(fmt[kind].format(k) for kind, k in path[:12]) + ("..." if len(path) > 12 else "")
    return text or "the top level"
