"""Typed records of the store: what an entry, a stored output and a head say, and the one loader
that decides whether a file on disk is one of them. (Immutable NamedTuples: every cached node's
lookup builds a few, and defining them costs a sixth of frozen slotted dataclasses at start-up.)

An entry says: the node with this key, having read these parameter values and files, produced
these stored outputs. Entries are read back by every run, by other processes and by later versions
of orch, so they are checked field by field on load: a file that is empty, truncated, of another
format version, missing a field or holding a field of the wrong type is not an entry. The store
warns once and treats it as a cache miss (the node re-runs and overwrites it); it never crashes
planning and never hands out a wrong value.

The JSON layout is the one orch 0.1.0 wrote, plus a "format" field; entries without it are format 1.
"""

from __future__ import annotations

import re
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from ..typeshim import NamedTuple

#: Written into every entry and head. Bump it when the layout changes incompatibly: entries of
#: another format are misses (the nodes re-run), never errors.
FORMAT = 1

_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_EXT_RE = re.compile(r"(\.[A-Za-z0-9_-]+)*\Z")  # "", ".pkl", ".tar.gz"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # a key or trace id: one safe path component


class EntryError(ValueError):
    """A record on disk is not a valid entry or head (the message says which field and why)."""


class ObjectInfo(NamedTuple):
    """What an entry records about one stored object: enough to find it and validate it cheaply."""

    hash: str  # sha256 hex of the file, or hashing.hash_dir of the tree
    size: int  # file size, or the sum of the file sizes of the tree
    kind: str  # "file" | "dir"
    ext: str = ""  # e.g. ".pkl": stored objects keep meaningful names for external tools

    def to_json(self) -> dict:
        return {"hash": self.hash, "size": self.size, "kind": self.kind, "ext": self.ext}

    @classmethod
    def from_json(cls, d: Any) -> ObjectInfo:
        d = _mapping(d, "object")
        info = cls(_str(d, "hash", "object"), _int(d, "size", "object"), _str(d, "kind", "object"),
                   _str(d, "ext", "object", default=""))
        check_object(info)
        return info


def check_object(info: ObjectInfo) -> None:
    """An object description becomes a path in the store: refuse anything that could escape it."""
    if (not isinstance(info.hash, str) or not _HASH_RE.match(info.hash) or not isinstance(info.ext, str)
            or not _EXT_RE.match(info.ext) or info.kind not in ("file", "dir")):
        raise EntryError(f"invalid object {info!r}: expected a sha256 hex hash, kind file|dir, ext like '.pkl'")


def check_name(what: str, name: str) -> str:
    """Keys, trace ids and head names become path components: letters, digits, '_', '.', '-'."""
    if type(name) is str and name.isascii() and name[:1].isalnum() and name.encode().replace(b"-", b"").isalnum():
        return name  # a key or a trace id ("<hex>-<hex>"): no regex (bytes.isalnum: a table per byte, 2.5x str's)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} {name!r}: expected letters, digits, '_', '.', '-'")
    return name


class StoredOutput(NamedTuple):
    """One output of a node as stored: the object, the cacher that wrote it ("module:QualName" and
    its config, to rebuild it at load) and the metadata that cacher returned."""

    object: ObjectInfo
    cacher: tuple[str, Any]
    metadata: Any = None

    def to_json(self) -> dict:
        return {"object": self.object.to_json(), "cacher": list(self.cacher), "metadata": self.metadata}

    @classmethod
    def from_json(cls, d: Any, where: str) -> StoredOutput:
        d = _mapping(d, where)
        cacher = d.get("cacher")
        if not (isinstance(cacher, list) and len(cacher) == 2 and isinstance(cacher[0], str)):
            raise EntryError(f"{where}.cacher must be [\"module:Class\", config], got {cacher!r}")
        return cls(ObjectInfo.from_json(d.get("object")), (cacher[0], cacher[1]), d.get("metadata"))


class Read(NamedTuple):
    """One parameter read: the hash that decides hits (keys.read_value_hash) and the value as
    people see it (JSON; a repr where the value has no JSON form)."""

    hash: str
    shown: Any = None

    def to_json(self) -> dict:
        return {"h": self.hash, "v": self.shown}


class KeyComponents(NamedTuple):
    """The parts a node key is derived from (core.keys.node_key), kept so that a later miss can say
    which part changed: stage id, version, code fingerprint, declaration hash, input content hashes
    by input name ("x" or "x@set" for aggregates) and, for aggregates, the parameter sets covered."""

    stage: str
    version: str | int | None
    code: str
    decl: str
    inputs: dict[str, str]
    sets: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        d = {"stage": self.stage, "version": self.version, "code": self.code, "decl": self.decl,
             "inputs": dict(self.inputs)}
        if self.sets is not None:
            d["sets"] = list(self.sets)
        return d

    @classmethod
    def from_json(cls, d: Any) -> KeyComponents:
        d = _mapping(d, "components")
        version = d.get("version")
        if version is not None and not isinstance(version, (str, int)):
            raise EntryError(f"components.version must be a string, an integer or null, got {version!r}")
        sets = d.get("sets")
        if sets is not None and not (isinstance(sets, list) and all(isinstance(s, str) for s in sets)):
            raise EntryError("components.sets must be a list of parameter set names")
        return cls(_str(d, "stage", "components"), version, _str(d, "code", "components"),
                   _str(d, "decl", "components"), _str_map(d.get("inputs"), "components.inputs"),
                   tuple(sets) if sets is not None else None)


class Entry(NamedTuple):
    """One stored computation of a node (see the module docstring)."""

    key: str
    trace_id: str
    stage: str  # "module:qualname" of the stage
    param_set: str  # the parameter set that computed it (any set with the same trace may use it)
    created: float  # epoch seconds; newest entries are tried first
    components: KeyComponents
    reads: dict[str, Read]  # dotted parameter path -> what was read
    files: dict[str, str]  # tracked file (project-relative where possible) -> content hash
    outputs: dict[str, StoredOutput]
    duration_s: float = 0.0
    #: Set when `orch accept` re-keyed this entry to new code without running it: who, when, the
    #: key it came from and the old and new code fingerprints (all strings).
    accepted: dict[str, str] | None = None
    #: What the stage logged (orchestrator.metrics.summarize) and the numbers of its JSON outputs:
    #: metric name -> {"last", "step", "min", "min_step", "max", "max_step", "n"}.
    metrics: dict[str, dict] | None = None
    #: The stored metrics stream (JSONL) the summary was made from, for curves; informational: a
    #: missing or damaged series never makes the entry a miss.
    series: ObjectInfo | None = None

    def output_hashes(self) -> dict[str, str]:
        return {name: out.object.hash for name, out in self.outputs.items()}

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "trace_id": self.trace_id, "created": self.created, "key": self.key,
            "stage": self.stage, "param_set": self.param_set, "components": self.components.to_json(),
            "reads": {path: r.to_json() for path, r in self.reads.items()}, "files": dict(self.files),
            "outputs": {name: out.to_json() for name, out in self.outputs.items()},
            "duration_s": self.duration_s,
        } | ({"accepted": dict(self.accepted)} if self.accepted is not None else {}) | (
            {"metrics": self.metrics} if self.metrics is not None else {}) | (
            {"series": self.series.to_json()} if self.series is not None else {})

    @classmethod
    def from_json(cls, d: Any) -> Entry:
        """The entry `d` describes, or EntryError naming the first field that is wrong.

        Every cached node's lookup parses one entry, so well-formed entries take a fast path of
        plain type checks; anything it does not accept goes through `_checked_entry`, which accepts
        exactly the same entries and names what is wrong with the others."""
        try:
            return _fast_entry(d)
        except (_NotFast, KeyError, TypeError, AttributeError, ValueError):
            return _checked_entry(d)


def _fast_entry(d: dict) -> Entry:
    fmt = d.get("format", FORMAT)
    key, trace, stage, pset, created = d["key"], d["trace_id"], d["stage"], d["param_set"], d["created"]
    duration, files, reads_in, outs_in, c = d.get("duration_s", 0.0), d["files"], d["reads"], d["outputs"], d["components"]
    if not (type(fmt) is int and fmt == FORMAT and type(key) is str and type(trace) is str and type(stage) is str
            and type(pset) is str and type(created) in _NUMBERS and type(duration) in _NUMBERS
            and _finite(created) and _finite(duration) and type(files) is dict
            and type(reads_in) is dict and type(outs_in) is dict and type(c) is dict
            and _NAME_RE.match(key) and _NAME_RE.match(trace)):
        raise _NotFast
    reads = {}
    for path, r in reads_in.items():
        h = r["h"]
        if type(h) is not str:
            raise _NotFast
        reads[path] = Read(h, r.get("v"))
    for v in files.values():
        if type(v) is not str:
            raise _NotFast
    outputs = {}
    for name, o in outs_in.items():
        ob, cacher = o["object"], o["cacher"]
        h, size, kind, ext = ob["hash"], ob["size"], ob["kind"], ob.get("ext", "")
        if not (type(h) is str and type(size) is int and size >= 0 and kind in _KINDS and type(ext) is str
                and type(cacher) is list and len(cacher) == 2 and type(cacher[0]) is str
                and _HASH_RE.match(h) and _EXT_RE.match(ext)):
            raise _NotFast
        outputs[name] = StoredOutput(ObjectInfo(h, size, kind, ext), (cacher[0], cacher[1]), o.get("metadata"))
    version, inputs, sets = c.get("version"), c["inputs"], c.get("sets")
    cstage, code, decl = c["stage"], c["code"], c["decl"]
    if not (type(cstage) is str and type(code) is str and type(decl) is str and type(inputs) is dict
            and (version is None or isinstance(version, (str, int)))
            and (sets is None or (type(sets) is list and all(type(x) is str for x in sets)))
            and all(type(v) is str for v in inputs.values())):
        raise _NotFast
    components = KeyComponents(cstage, version, code, decl, inputs, tuple(sets) if sets is not None else None)
    accepted = d.get("accepted")
    if accepted is not None and not (type(accepted) is dict and all(type(v) is str for v in accepted.values())):
        raise _NotFast
    metrics, series = d.get("metrics"), d.get("series")
    if metrics is not None and not metrics_ok(metrics):
        raise _NotFast
    if series is not None:
        h, size, kind, ext = series["hash"], series["size"], series["kind"], series.get("ext", "")
        if not (type(h) is str and type(size) is int and size >= 0 and kind in _KINDS and type(ext) is str
                and _HASH_RE.match(h) and _EXT_RE.match(ext)):
            raise _NotFast
        series = ObjectInfo(h, size, kind, ext)
    return Entry(key, trace, stage, pset, float(created), components, reads, files, outputs, float(duration), accepted,
                 metrics, series)


def metrics_ok(metrics: Any) -> bool:
    """{name: {field: number or null}}: a summary as orchestrator.metrics.summarize makes it."""
    return type(metrics) is dict and all(
        type(m) is dict and all(v is None or is_number(v) for v in m.values()) for m in metrics.values())


def _checked_entry(d: Any) -> Entry:
    d = _mapping(d, "entry")
    _check_format(d)
    reads = {}
    for path, r in _mapping(d.get("reads"), "reads").items():
        if not (isinstance(r, dict) and isinstance(r.get("h"), str)):
            raise EntryError(f"reads[{path!r}] must be {{\"h\": hash, \"v\": value}}")
        reads[path] = Read(r["h"], r.get("v"))
    outputs = {name: StoredOutput.from_json(o, f"outputs[{name!r}]")
               for name, o in _mapping(d.get("outputs"), "outputs").items()}
    return Entry(
        key=check_entry_name("key", _str(d, "key", "entry")),
        trace_id=check_entry_name("trace_id", _str(d, "trace_id", "entry")),
        stage=_str(d, "stage", "entry"), param_set=_str(d, "param_set", "entry"),
        created=_number(d, "created"), components=KeyComponents.from_json(d.get("components")),
        reads=reads, files=_str_map(d.get("files"), "files"), outputs=outputs,
        duration_s=_number(d, "duration_s", default=0.0),
        accepted=_str_map(d["accepted"], "accepted") if d.get("accepted") is not None else None,
        metrics=_metrics(d.get("metrics")),
        series=ObjectInfo.from_json(d["series"]) if d.get("series") is not None else None,
    )


def _metrics(value: Any) -> dict | None:
    if value is not None and not metrics_ok(value):
        raise EntryError("metrics must map each metric name to {field: number or null}")
    return value


class _NotFast(Exception):
    """Not for the fast path: let the checked one decide (and explain)."""


_NUMBERS = (int, float)


def is_number(v: object) -> bool:
    """A float (NaN and infinities too: a diverging loss is news) or an int a float can hold: what a
    metric may be. A longer int would raise OverflowError wherever it is drawn or compared."""
    return type(v) is float or type(v) is int and -sys.float_info.max <= v <= sys.float_info.max


def _finite(x: int | float) -> bool:
    """A number a float holds, not inf or NaN: math.isfinite, except that an int beyond a float's
    range is False rather than an OverflowError (a hand-edited entry is a miss, not a crash). Without
    math: a shared library many Python builds load from disk, at every start."""
    try:
        x = float(x)
    except OverflowError:
        return False
    return x - x == 0.0
_KINDS = ("file", "dir")


class Head(NamedTuple):
    """The last computation of a (stage, parameter set): its key, components and entry, what a
    miss is explained against ("code changed", "parameter train.lr changed: 0.1 -> 0.3")."""

    key: str
    created: float
    components: KeyComponents
    trace_id: str | None = None  # the entry it wrote (heads of orch 0.1.0 have none)

    def to_json(self) -> dict:
        d = {"format": FORMAT, "created": self.created, "key": self.key, "components": self.components.to_json()}
        return d | ({"trace_id": self.trace_id} if self.trace_id is not None else {})

    @classmethod
    def from_json(cls, d: Any) -> Head:
        d = _mapping(d, "head")
        _check_format(d)
        trace = d.get("trace_id")
        return cls(_str(d, "key", "head"), _number(d, "created"), KeyComponents.from_json(d.get("components")),
                   check_entry_name("trace_id", trace) if trace is not None else None)


class CodeManifest(NamedTuple):
    """What one code fingerprint is made of: item ("module:qualname") -> [digest, where it lives].
    Stored once per fingerprint, so a miss can say which function of which file changed."""

    items: dict[str, list[str]]

    def to_json(self) -> dict:
        return {"format": FORMAT, "items": self.items}

    @classmethod
    def from_json(cls, d: Any) -> CodeManifest:
        d = _mapping(d, "code manifest")
        _check_format(d)
        items = _mapping(d.get("items"), "items")
        for name, v in items.items():
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
                raise EntryError(f"items[{name!r}] must be [digest, file]")
        return cls(items)


def check_entry_name(what: str, name: str) -> str:
    try:
        return check_name(what, name)
    except ValueError as e:
        raise EntryError(str(e)) from None


# -- field checks: each raises EntryError naming the field -------------------------------------------

def _check_format(d: dict) -> None:
    fmt = d.get("format", 1)
    if fmt != FORMAT or isinstance(fmt, bool):
        raise EntryError(f"format {fmt!r}, this orch reads format {FORMAT} (written by another version of orch)")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise EntryError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _str(d: dict, name: str, where: str, default: str | None = None) -> str:
    value = d.get(name, default)
    if not isinstance(value, str):
        raise EntryError(f"{where}.{name} must be a string, got {value!r}" if name in d else f"{where}.{name} is missing")
    return value


def _int(d: dict, name: str, where: str) -> int:
    value = d.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EntryError(f"{where}.{name} must be a non-negative integer, got {value!r}")
    return value


def _number(d: dict, name: str, default: float | None = None) -> float:
    value = d.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
        raise EntryError(f"{name} must be a number, got {value!r}" if name in d else f"{name} is missing")
    return float(value)


def _str_map(value: Any, where: str) -> dict[str, str]:
    value = _mapping(value, where)
    for k, v in value.items():
        if not isinstance(v, str):
            raise EntryError(f"{where}[{k!r}] must be a string, got {v!r}")
    return value
