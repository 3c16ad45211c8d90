"""A run manifest's header (every top-level field but "nodes") without parsing its rows.

`orch runs` lists twenty runs and `orch cache gc` asks whether a run is still in progress: neither
needs a node row, but a 100,000-node run's manifest is ~40 MB of them (~0.5 s to parse), so a list of
such runs took 20 s. A manifest of format 2 puts "nodes" last, and its header is read field by field
up to there, a chunk at a time. Anything else (an older manifest, whose "summary" follows its rows; a
field this reader cannot finish) is read whole, as before. It reads what orch writes: it takes a few
forms strict JSON refuses (a comma before the closing brace, bytes after it), and of a key repeated
around the rows, the value before them.
"""

from __future__ import annotations

import codecs
import json

from ..fsutil import read_json_object

#: The manifest layout whose rows come last (runs.manifest writes it; older ones have no "format").
FORMAT = 2
#: Bytes read at a time; a header is usually one chunk (parameter sets can make it longer).
CHUNK = 1 << 16

_decode_value = json.JSONDecoder().raw_decode


class _Short(Exception):
    """The text read so far ends inside the field being parsed."""


def read_header(path, wanted: tuple[str, ...] = ()) -> dict | None:
    """The manifest at `path` without "nodes"; None if it cannot be read. With `wanted`, a caller that
    needs only those fields (all of which precede the rows in every layout, such as "status") gets
    them from an older manifest without its rows parsed too, and perhaps without the fields after them."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            head = _read_header(f, wanted)
        except (OSError, ValueError, RecursionError):  # damaged, not UTF-8: the whole read decides (None)
            head = None
    if head is not None:
        return head
    m = read_json_object(path)
    if m is not None:
        m.pop("nodes", None)
    return m


def _read_header(f, wanted: tuple[str, ...]) -> dict | None:
    """The fields before "nodes" of a format-2 manifest, or of any manifest that has all `wanted`
    fields before its rows; None otherwise."""
    decode = codecs.getincrementaldecoder("utf-8")().decode
    text, eof = "", False
    fields: dict = {}
    pos = None  # where the next field starts (after "{" or ",")
    while True:
        try:
            if pos is None:
                pos = _after(text, _ws(text, 0), "{")
            while True:
                start = _ws(text, pos)
                if text[start] == "}":
                    return fields  # the whole manifest, which has no rows
                key, end = _value(text, start)
                if type(key) is not str:
                    raise ValueError(f"a key that is not a string at {start}")
                if not fields and key != "format" and not wanted:
                    return None  # an older manifest: its rows are not last
                end = _after(text, _ws(text, end), ":")
                if key == "nodes":
                    return fields if _complete(fields, wanted) else None
                value, end = _value(text, _ws(text, end))
                fields[key] = value
                end = _ws(text, end)
                if text[end] == ",":
                    pos = end + 1
                elif text[end] != "}":
                    raise ValueError(f"expected ',' or '}}' at {end}")
                else:
                    pos = end
        except (_Short, IndexError):
            if eof:
                raise ValueError("the manifest ends inside its header") from None
            chunk = f.read(max(CHUNK, len(text)))  # doubling: a field re-parsed from its start stays linear
            eof = not chunk
            text += decode(chunk, final=eof)


def _complete(fields: dict, wanted: tuple[str, ...]) -> bool:
    """What precedes the rows is all the caller needs: a format-2 header, or the `wanted` fields."""
    return fields.get("format") == FORMAT or bool(wanted) and all(k in fields for k in wanted)


def _ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\n\r":
        pos += 1
    if pos == n:
        raise _Short
    return pos


def _after(text: str, pos: int, char: str) -> int:
    if text[pos] != char:
        raise ValueError(f"expected {char!r} at {pos}")
    return pos + 1


def _value(text: str, pos: int) -> tuple[object, int]:
    """One JSON value at `pos`, and where it ends; _Short if the text may stop inside it: a number
    at the very end, or one that "12." or "1e+" cut short (the decoder takes the "12" of them)."""
    try:
        value, end = _decode_value(text, pos)
    except json.JSONDecodeError:
        raise _Short from None
    if end == len(text) or text[end] in ".eE+-" and type(value) in (int, float):
        raise _Short
    return value, end
