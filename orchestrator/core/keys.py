"""The key scheme: how every name orch keeps in the store is derived. The planner, the executors and
the lock scopes all derive names here, and golden digests pin each derivation (tests/test_keys.py):
changing one re-keys every user's cache, so it is a deliberate bump of KEY_VERSION, never a side
effect.

A node is looked up in two steps. Its *key* covers what is known before the stage runs: the stage's
id and version, its code fingerprint, the hash of its declaration, the content hashes of its inputs
(and, for an aggregate, the parameter sets it covers). Under a key, *entries* are named by a *trace
id*: which parameters and tracked files the stage read (the signature) and the values it saw. An
entry is a hit only while every recorded read still has its recorded value (`check_trace`), so a
parameter the stage never reads never re-runs it, and one it reads always does.
"""

from __future__ import annotations

import functools
import json
import struct

from ..hashing import hash_value, sha
from ..hashing.values import VALUE_PREFIX, encode
from ..params import MISSING, is_ignored
from ..store.entries import Entry, KeyComponents

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

#: Versions the node key derivation. Bumping it makes every existing entry a miss (never an error).
KEY_VERSION = "orch-node-v1"
#: Hex chars of a trace id's signature part (64 bits). It tells apart the few different *sets* of
#: reads one key has (usually one); the values part below carries the uniqueness.
SIGNATURE_CHARS = 16
#: Hex chars of a trace id's values part (160 bits): an entry file is opened by this name, so two
#: different traces must never share it.
TRACE_VALUE_CHARS = 40
#: Hex chars added to a key to name a lock scope (80 bits): a collision would only make two
#: computations wait for each other, never share a result.
SCOPE_CHARS = 20
#: Hex chars of a node's checkpoint directory name (128 bits).
CHECKPOINT_NAME_CHARS = 32


def node_key(c: KeyComponents) -> str:
    """The key of a node: the static components hashed once, then the inputs by name; i.e.
    hash_value((KEY_VERSION, static hash, sorted(inputs.items()))), its bytes built here directly
    for the usual all-str inputs (every cached node's key is derived on the planning path)."""
    head = _static_head(c.stage, c.version, c.code, c.decl, c.sets)
    pairs = []
    for name, digest in sorted(c.inputs.items()) if len(c.inputs) > 1 else c.inputs.items():
        if type(name) is not str or type(digest) is not str:
            return hash_value((KEY_VERSION, _static_hash(c.stage, c.version, c.code, c.decl, c.sets),
                               sorted(c.inputs.items())))
        if len(digest) == 64 and digest.isascii():  # a content hash: its frame is known
            pairs.append(_name_frame(name) + digest.encode())
        else:
            n = name.encode("utf-8", "surrogatepass")
            d = digest.encode("utf-8", "surrogatepass")
            pair = _FRAME(b"s", len(n)) + n + _FRAME(b"s", len(d)) + d
            pairs.append(_FRAME(b"t", len(pair)) + pair)
    listed = b"".join(pairs)
    body = head + _FRAME(b"l", len(listed)) + listed
    return sha.new(_KEY_PREFIX + _FRAME(b"t", len(body)) + body).hexdigest()


#: Frames and prefix of hashing.values' encoding, for node_key's direct build of the same bytes
#: (tests/test_keys.py compares the two on random components).
_FRAME = struct.Struct(">cQ").pack
_KEY_PREFIX = VALUE_PREFIX


@functools.lru_cache(maxsize=4096)
def _name_frame(name: str) -> bytes:
    """The encoded (name, <64 ASCII chars>) pair up to the digest's own bytes: input names repeat
    across the nodes of a sweep, so this is built once per name."""
    n = name.encode("utf-8", "surrogatepass")
    pair_len = len(_FRAME(b"s", len(n))) * 2 + len(n) + 64
    return _FRAME(b"t", pair_len) + _FRAME(b"s", len(n)) + n + _FRAME(b"s", 64)


@functools.lru_cache(maxsize=4096, typed=True)  # typed: a version 1 and a version True hash differently
def _static_head(stage: str, version, code: str, decl: str, sets: tuple | None) -> bytes:
    """The encoded start of a node key's tuple: KEY_VERSION and the static hash, once per stage."""
    return encode(KEY_VERSION) + encode(_static_hash(stage, version, code, decl, sets))


@functools.lru_cache(maxsize=4096, typed=True)
def _static_hash(stage: str, version, code: str, decl: str, sets: tuple | None) -> str:
    """What every node of a stage shares (all its parameter sets): hashed once per stage."""
    static = [("code", code), ("decl", decl), ("stage", stage), ("version", version)]
    if sets is not None:
        static.append(("sets", list(sets)))
    static.sort()
    return hash_value(static)


@functools.lru_cache(maxsize=4096)
def head_key(stage_id: str, set_name: str) -> str:
    """Where the latest key of (stage, parameter set) is remembered, to explain a later miss.
    Memoized: a node that runs asks twice (explaining its miss, then writing its head)."""
    return hash_value(("head", stage_id, set_name))


def read_value_hash(value: Any) -> str:
    """The hash recorded for one parameter read; absence (MISSING) is tagged, never confused with a
    value, so `params.get("x", 0)` re-runs once x is added."""
    if value is MISSING:
        return hash_value(("missing",))
    return hash_value(("value", value))


def trace_signature(read_paths: Iterable[str], file_names: Iterable[str]) -> str:
    """Which parameters and files were read (not their values)."""
    return hash_value(("reads", sorted(read_paths), sorted(file_names)))[:SIGNATURE_CHARS]


def trace_id(read_hashes: dict[str, str], file_hashes: dict[str, str]) -> str:
    """Name of an entry: "<signature>-<values>". A lookup that knows a stage's usual reads predicts
    the name of a matching entry from the current values and opens it directly, instead of reading
    every entry of the key."""
    return _trace_id(tuple(sorted(read_hashes.items())), tuple(sorted(file_hashes.items())))


@functools.lru_cache(maxsize=4096)
def _trace_id(reads: tuple, files: tuple) -> str:
    """Memoized: the nodes of a sweep that read the same values share one trace id."""
    values = hash_value(("trace", list(reads), list(files)))
    return f"{trace_signature([p for p, _ in reads], [f for f, _ in files])}-{values[:TRACE_VALUE_CHARS]}"


def signature_of(trace: str) -> str:
    return trace.split("-", 1)[0]


def names_tell(sig: str, reads: tuple, files: tuple, ignore: tuple) -> bool:
    """Whether entries of signature `sig` are told apart by name: an entry's name is "<signature>-<hash
    of the values read>", so once the one name that would hold now is known (holding_trace_id), every
    other name of the signature recorded some other value and need not be read. Not when `sig` is not
    the signature of these reads and files (learned from an entry whose name does not match its
    content: a hint is only a hint), nor when the stage ignores one of the reads (check_trace skips an
    ignored read; the name does not)."""
    return trace_signature(reads, files) == sig and not (ignore and any(is_ignored(p, ignore) for p in reads))


def holding_trace_id(reads: Iterable[str], files: Iterable[str], read_hash: Callable[[str], str],
                     file_hash: Callable[[str], str | None]) -> str | None:
    """The name an entry that recorded these reads and files has if it holds now; None when that
    cannot be said (a tracked file gone, a value with no hash): every entry is then read and checked."""
    file_hashes = {}
    for name in files:
        h = file_hash(name)
        if h is None:
            return None
        file_hashes[name] = h
    try:
        return trace_id({p: read_hash(p) for p in reads}, file_hashes)
    except TypeError:  # a value that cannot be hashed now: check_trace says what it says of each entry
        return None


def lock_scope_name(key: str, read_hashes: list[tuple[str, str]]) -> str:
    """A lock name: the key plus the hashes of the parameter values the stage visibly reads (see
    core.lockscope for why)."""
    return f"{key}.{hash_value(('scope', read_hashes))[:SCOPE_CHARS]}"


def checkpoint_dir_name(key: str | None, stage_ref: tuple[str, str], set_name: str, params: dict) -> str:
    """Same node, same name across runs: the key (code, version, inputs) and the whole parameter set
    (what the stage will read is unknown before it runs, so every parameter counts)."""
    return hash_value(("scratch", key or list(stage_ref), set_name, params))[:CHECKPOINT_NAME_CHARS]


#: A traced dependency named with this prefix is an artifact of another run loaded inside the stage
#: (orchestrator.load); the rest of the name says which (see artifact_trace_name). Tracked files are
#: named by normalized paths, which never contain "//".
ARTIFACT_PREFIX = "orch-artifact://"


def artifact_trace_name(cache: str, run: str, param_set: str | None, name: str) -> str:
    """The traced name of `orchestrator.load(name, run=run, param_set=param_set, cache=cache)`:
    the query, not its answer, so a later lookup asks again (run="latest" may be a newer run)."""
    query = {"cache": cache, "name": name, "param_set": param_set, "run": run}
    return ARTIFACT_PREFIX + json.dumps(query, sort_keys=True, separators=(",", ":"))


def artifact_query(traced: str) -> dict | None:
    """The query of an artifact's traced name, or None for a tracked file."""
    if not traced.startswith(ARTIFACT_PREFIX):
        return None
    try:
        query = json.loads(traced[len(ARTIFACT_PREFIX):])
    except ValueError:
        return None
    return query if isinstance(query, dict) else None


def describe_traced(traced: str) -> str:
    """A traced dependency as `orch why` names it."""
    query = artifact_query(traced)
    if query is None:
        return f"file {traced}"
    where = f"run {query.get('run')}" + (f" [{query['param_set']}]" if query.get("param_set") else "")
    return f"artifact {query.get('name')!r} of {where} in {query.get('cache')}"


def check_trace(entry: Entry, ignore: tuple[str, ...], read_hash: Callable[[str], str],
                value_now: Callable[[str], Any], file_hash: Callable[[str], str | None]) -> str | None:
    """None when every read recorded in `entry` still has its recorded value; else a sentence naming
    the first that changed. `read_hash(path)` / `value_now(path)` give the current hash and value of
    a parameter, `file_hash(name)` a tracked file's current content hash (None if it is gone)."""
    for path, read in entry.reads.items():
        if is_ignored(path, ignore):
            continue
        if read_hash(path) != read.hash:
            return f"parameter {path or '<all>'} changed: {shown(read.shown)} -> {shown(value_now(path))}"
    for name, digest in entry.files.items():
        now = file_hash(name)
        if now != digest:
            return f"{describe_traced(name)} changed" if now else f"{describe_traced(name)} is gone"
    return None


def shown(v: Any) -> str:
    """A parameter value in a sentence: short, and absence said as such."""
    if v is MISSING or v == "<missing>":
        return "<missing>"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
