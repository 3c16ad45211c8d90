"""The damage sweep: what every file of a cache directory may hold after a crash, a bad copy, a
full disk or a hand edit, and what orch must do with it.

A project using every kind of output (JSON, pickle, a Lazy pickle, a directory through
FileReferenceCacher, an aggregate over two parameter sets, a tracked data file, logged metrics, a
pyproject.toml) runs once. Then, one
case at a time, one file of its cache is damaged (emptied, cut in half, its first bytes replaced,
JSON nested past the parser's limit, a number past a float's range, each field of a JSON record
replaced by a value of another type), and the real CLI must:

- run the experiment again: exit 0, no traceback (a damaged record is a miss, with a warning);
- give the final artifact byte for byte as before (`orch get`). A stored object whose damage kept
  its size is only found when it is read: then `get` may refuse it once (it is quarantined), and
  after one more run `get` must give the original;
- before that, list, show, report and explain runs (COMMANDS) with exit 0 or a clean error, never a
  traceback (so they read the damaged run's record, which the run would replace as the latest).

tests/test_damaged_cache.py runs a sample of the cases; bench/damage.py runs all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ORCH = [sys.executable, "-m", "orchestrator.cli"]
RUN = ("run", "experiment.py", "-p", "params/p.yaml", "-q")
#: what must never show a traceback with any file damaged (besides `run` and `get`)
COMMANDS = (("runs",), ("show", "latest"), ("report",), ("status",), ("compare",),
            ("why", "experiment.py", "-p", "params/p.yaml"), ("graph", "experiment.py", "-p", "params/p.yaml"),
            ("cache", "verify"))
FINAL = "summary"  # the aggregate's output: it depends on every other node

PROJECT = {
    "stages/__init__.py": "",
    "stages/all.py": '''
        import json
        import os

        from orchestrator import FileReferenceCacher, JsonCacher, Lazy, PickleCacher, aggregate, stage


        @stage(outputs=["raw"], cachers=[JsonCacher])
        def load(record):
            with open(record.track("data/input.txt")) as f:
                base = len(f.read())
            return {"base": base, "lr": record.params.train.lr}


        @stage(inputs=["raw"], outputs=["table", Lazy("blob")], cachers=[PickleCacher, PickleCacher])
        def prep(record, raw):
            return [raw["base"] * i for i in range(5)], b"x" * (1000 + int(raw["lr"] * 100))


        @stage(inputs=["table", Lazy("blob")], outputs=["outdir"], cachers=[FileReferenceCacher])
        def train(record, table, blob):
            for step in range(3):  # a metrics stream: the run's, and a stored series
                record.log(step, loss=1.0 / (step + 1), lr=record.params.train.lr)
            d = record.get_dir("outdir")
            with open(os.path.join(d, "result.json"), "w") as f:
                json.dump({"sum": sum(table), "blob": len(blob.load())}, f)
            return d


        @aggregate(inputs=["outdir"], outputs=["summary"], cachers=[JsonCacher])
        def collect(record, outdir):
            out = {}
            for name, d in sorted(outdir.items()):
                with open(os.path.join(d, "result.json")) as f:
                    out[name] = json.load(f)
            return out
        ''',
    "experiment.py": '''
        from stages.all import collect, load, prep, train


        def run(record):
            train(prep(load(record)))


        def aggregate(records):
            collect(records)
        ''',
    "params/p.yaml": '''
        train: {lr: 0.1}
        sweep:
          train.lr: [0.1, 0.2]
        ''',
    "data/input.txt": "hello world\n",
    "pyproject.toml": """
        [project]
        name = "damaged"

        [tool.orch]
        exclude = ["data"]
        """,
}

#: values a JSON field is replaced by (each unless it is the field's value): every JSON type, empty
#: containers, and a number no float holds
BAD_VALUES = (None, [], {}, "x", 10**400, -1, 1.5)


@dataclass(frozen=True)
class Finding:
    file: str  # relative to the cache directory
    damage: str
    command: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file} [{self.damage}] orch {self.command}: {self.detail}"


def kind_of(rel: str) -> str:
    """What a cache file is, for choosing a sample: its directory, and for objects their type."""
    parts = rel.split("/")
    if parts[0] == "objects":
        return "object-dir" if len(parts) > 3 else f"object{os.path.splitext(rel)[1]}"
    if parts[0] == "runs":
        return f"runs/{parts[-1] if len(parts) == 3 else parts[2]}"
    return parts[0] if len(parts) > 1 else rel


def damages(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, new content) of every damage applied to a file holding `data`."""
    yield "empty", b""
    yield "half", data[: len(data) // 2]
    yield "first bytes not utf-8", b"\xff\xfe" + data[2:]
    yield "nested arrays", b"[" * 100_000
    yield "nested objects", b'{"a":' * 100_000
    yield "a huge number", b"1" + b"0" * 4000
    try:
        record = json.loads(data)
    except ValueError:
        yield from _line_damages(data)
        return
    yield "numbers past a float", _dumps(_map_leaves(record, lambda v: 10**400 if _number(v) else v))
    yield "numbers infinite", _dumps(_map_leaves(record, lambda v: float("inf") if _number(v) else v))
    yield "strings as numbers", _dumps(_map_leaves(record, lambda v: 7 if type(v) is str else v))
    yield "leaves null", _dumps(_map_leaves(record, lambda v: None))
    if isinstance(record, dict):
        for name, value in record.items():
            for bad in BAD_VALUES:
                if not (type(bad) is type(value) and bad == value):
                    yield f"{name}={_short(bad)}", _dumps({**record, name: bad})
            if isinstance(value, dict) and value:  # one level down: a field of a nested record
                for sub in value:
                    yield f"{name}.{sub}={{}}", _dumps({**record, name: {**value, sub: {}}})
                yield f"{name} without {next(iter(value))}", _dumps({**record, name: dict(list(value.items())[1:])})


def _line_damages(data: bytes) -> Iterator[tuple[str, bytes]]:
    """A JSON-lines file (a metrics stream): its first record damaged, the other lines kept."""
    first, sep, rest = data.partition(b"\n")
    try:
        record = json.loads(first)
    except ValueError:
        return
    for name, line in (("nested arrays", b"[" * 100_000),
                       ("numbers past a float", _dumps(_map_leaves(record, lambda v: 10**400 if _number(v) else v))),
                       ("strings as numbers", _dumps(_map_leaves(record, lambda v: 7 if type(v) is str else v))),
                       ("leaves null", _dumps(_map_leaves(record, lambda v: None))),
                       ("a list", b"[1, 2]")):
        yield f"first line: {name}", line + sep + rest


def _number(v: object) -> bool:
    return type(v) in (int, float)


def _map_leaves(v: object, f: Callable[[object], object]) -> object:
    if isinstance(v, dict):
        return {k: _map_leaves(x, f) for k, x in v.items()}
    if isinstance(v, list):
        return [_map_leaves(x, f) for x in v]
    return f(v)


def _dumps(v: object) -> bytes:
    return json.dumps(v).encode()


def _short(v: object) -> str:
    text = json.dumps(v)
    return text if len(text) <= 8 else text[:6] + ".."


class Sweep:
    """One project and its cache as made by one run, restored before each case."""

    def __init__(self, workdir: Path, env: dict | None = None):
        self.root = workdir / "project"
        self.snapshot = workdir / "snapshot"
        self.cache = self.root / ".orch"
        self.env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        self.env.pop("ORCH_CACHE", None)
        for rel, text in PROJECT.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        # older than the racy windows of the stat and fingerprint caches (hashing.statcache.RACY_NS), so
        # that the first run records every file in them and the sweep has those caches to damage
        time.sleep(0.3)
        first = self.orch(*RUN)
        if first.returncode != 0:
            raise RuntimeError(f"the undamaged project failed:\n{first.stdout}{first.stderr}")
        self.reference = self.get()
        if self.reference is None:
            raise RuntimeError(f"orch get {FINAL} failed on the undamaged project")
        shutil.copytree(self.cache, self.snapshot, symlinks=True)
        self.files = sorted(str(p.relative_to(self.snapshot)) for p in self.snapshot.rglob("*") if p.is_file())

    def orch(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*ORCH, *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)

    def get(self) -> bytes | None:
        out = self.root / "got.out"
        out.unlink(missing_ok=True)
        return out.read_bytes() if self.orch("get", FINAL, "-o", str(out)).returncode == 0 else None

    def cases(self) -> Iterator[tuple[str, str, bytes]]:
        """(file, damage, new content) of every case."""
        for rel in self.files:
            for damage, data in damages((self.snapshot / rel).read_bytes()):
                yield rel, damage, data

    def damage(self, rel: str, data: bytes) -> None:
        """A fresh copy of the cache as the first run left it, with `rel` holding `data`."""
        shutil.rmtree(self.cache)
        shutil.copytree(self.snapshot, self.cache, symlinks=True)
        target = self.cache / rel
        target.chmod(0o644)  # stored objects are read-only
        target.write_bytes(data)

    def check(self, rel: str, damage: str, data: bytes, commands=COMMANDS) -> list[Finding]:
        """Damage `rel` and run the CLI; what went wrong."""
        self.damage(rel, data)
        found = []

        def judge(args: tuple[str, ...], proc: subprocess.CompletedProcess, ok_codes: tuple[int, ...]) -> None:
            text = proc.stdout + proc.stderr
            if "Traceback" in text or proc.returncode not in ok_codes:
                last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
                found.append(Finding(rel, damage, " ".join(args[:2]), f"exit {proc.returncode}: {last[0][:300]}"))

        for args in commands:  # first: `latest` is still the run whose record may be the damaged file
            judge(args, self.orch(*args), (0, 1))
        judge(RUN, self.orch(*RUN), (0,))
        if not found:
            got = self.get()
            if got is None:  # an object whose damage kept its size: quarantined when read; the next run redoes it
                judge(RUN, self.orch(*RUN), (0,))
                got = self.get()
            if got != self.reference:
                found.append(Finding(rel, damage, f"get {FINAL}", "not the original artifact" if got else "failed twice"))
        return found
