"""File references: how FileReferenceCacher turns the paths a stage returns into one stored object
and back.

A single file or directory the stage wrote in its staging area is stored as it is (a rename). Any
other case (a list of paths, or paths outside the staging area) becomes a *bundle*: a directory
object with the stage's own files under files/ and an index listing every item in order; external
files are referenced, not copied, with their content hash in the index (so the object's hash
changes with them) and their stat signatures in the metadata (so an unchanged file is not
re-hashed at load). A referenced file that changed is reported as damage: its producer re-runs.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from ..errors import DamagedObjectError, StageOutputError
from ..hashing import hash_path, hash_value, stat_signature

if TYPE_CHECKING:
    from ..cachers import OutputTarget

INDEX = "orch-index.json"


def prepare_paths(value, out: OutputTarget, expect: str | None) -> tuple[str, str, dict]:
    """(path of the object to store, its extension, metadata) for what the stage returned."""
    single = not isinstance(value, (list, tuple))
    items = [value] if single else list(value)
    staging = os.path.realpath(out.staging)
    resolved = [_checked_path(item, i, single, out, expect) for i, item in enumerate(items)]
    kinds = [(p, is_under(p, staging)) for p in resolved]
    if single and kinds[0][1]:  # the common case: one file or directory the stage wrote
        src = kinds[0][0]
        return src, _safe_ext(src), {"mode": "item", "name": os.path.basename(src),
                                     "kind": "dir" if os.path.isdir(src) else "file"}
    return _bundle(kinds, single, staging, out)


def load_paths(path: str, metadata: dict | None):
    """The path (or list of paths) the stage returned, as consumers receive it."""
    meta = metadata or {}
    if meta.get("mode", "item") == "item":
        return os.fspath(path)
    with open(os.path.join(path, INDEX), encoding="utf-8") as f:
        index = json.load(f)
    result = []
    for kind, where in index["items"]:
        if kind == "stored":
            result.append(os.path.join(path, "files", *where.split("/")))
        else:
            _check_reference(where, index["refs"][where], meta.get("sigs", {}).get(where))
            result.append(where)
    return result[0] if index["single"] else result


def _checked_path(item, i: int, single: bool, out: OutputTarget, expect: str | None) -> str:
    what = f"stage {out.stage}: output {out.output!r}" + ("" if single else f" item {i}")
    if not isinstance(item, (str, os.PathLike)):
        raise StageOutputError(f"{what} is a {type(item).__name__}, not a path; FileReferenceCacher outputs are "
                               f"paths (str or Path) or lists of paths")
    path = os.path.abspath(os.fspath(item))
    if not os.path.exists(path):
        raise StageOutputError(f"{what} is the path {path}, which does not exist; return a path the stage "
                               f"wrote (e.g. with record.get_path(name)) or an existing file")
    is_dir = os.path.isdir(path)
    if expect == "file" and is_dir:
        raise StageOutputError(f"{what} is the directory {path} but FileReferenceCacher(expect='file') expects a file")
    if expect == "dir" and not is_dir:
        raise StageOutputError(f"{what} is the file {path} but FileReferenceCacher(expect='dir') expects a directory")
    if not is_dir and not os.path.isfile(path):
        raise StageOutputError(f"{what} is {path}, which is neither a regular file nor a directory")
    real = os.path.realpath(path)
    return real if is_under(real, out.staging) else path


def _bundle(kinds: list[tuple[str, bool]], single: bool, staging: str, out: OutputTarget):
    files_root = os.path.join(staging, "files")
    bundle = out.path
    os.makedirs(os.path.join(bundle, "files"))
    index, refs, sigs = [], {}, {}
    moved: list[str] = []
    for path, staged in kinds:
        if staged:
            base = files_root if is_under(path, files_root) else staging
            rel = os.path.relpath(path, base).replace(os.sep, "/")
            clash = next((r for r in moved if _overlaps(r, rel)), None)
            if clash is not None:
                raise StageOutputError(f"stage {out.stage}: output {out.output!r} lists both {clash} and {rel}, "
                                       f"one inside the other; return each file or directory once")
            dest = os.path.join(bundle, "files", *rel.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(path, dest)
            moved.append(rel)
            index.append(["stored", rel])
        else:
            kind = "dir" if os.path.isdir(path) else "file"
            sig = _signature(path, kind)  # before hashing: a write meanwhile shows up at load
            if out.record is not None:
                out.record.track(path)  # the entry is valid only while it is unchanged
                digest = out.record.tracked_hash(path)
            else:
                digest = hash_path(path)[1]
            refs[path] = {"kind": kind, "hash": digest}
            sigs[path] = sig
            index.append(["ref", path])
    with open(os.path.join(bundle, INDEX), "w", encoding="utf-8") as f:
        json.dump({"single": single, "items": index, "refs": refs}, f, sort_keys=True)
    return bundle, "", {"mode": "bundle", "single": single, "items": index, "sigs": sigs}


def _check_reference(path: str, ref: dict, sig: str | None) -> None:
    """A referenced file must still be what the stage returned: a cheap stat comparison, and a
    re-hash only when the stat differs."""
    try:
        if sig is not None and _signature(path, ref["kind"]) == sig:
            return
        kind, digest, _ = hash_path(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DamagedObjectError(f"referenced file {path} is gone") from None
    if (kind, digest) != (ref["kind"], ref["hash"]):
        raise DamagedObjectError(f"referenced file {path} changed since the stage that returned it ran")


def _signature(path: str, kind: str) -> str:
    return hash_value(stat_signature(path, kind))


def is_under(path: str, root) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _safe_ext(path: str) -> str:
    """The file's extension if the store accepts it (".pt", ".tar.gz"), else none."""
    if os.path.isdir(path):
        return ""
    name = os.path.basename(path)
    ext = name[name.find("."):] if "." in name.lstrip(".") else ""
    return ext if re.fullmatch(r"(\.[A-Za-z0-9_-]+)+", ext) else ""
