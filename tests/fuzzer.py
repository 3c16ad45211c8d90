"""A differential fuzzer of the cache: random projects, random edits, two oracles after every step.

A seeded generator writes a project (a DAG of 3-30 stages over 1-6 parameter sets: helpers shared
between stages, module constants, tracked files, aggregates, Lazy and file-reference outputs) and
then applies a random sequence of steps: a parameter value, a sweep value, a stage body, a helper body
(behaviour-changing, an equivalent rewrite, or cosmetic), a tracked file (new content, or the same
content rewritten), a module constant, `--overwrite-stage`, a kill -9 at a random moment, a flipped
byte in a stored object, a malformed entry, `--parallel 2` or sequential. After every step:

1. **Artifacts**: every output hash of the run equals that of a from-scratch run of the same project
   in a fresh cache (the reference). A wrong cache hit shows here.
2. **Executions**: the stages that executed are exactly those the key rules predict, counted per
   stage. A node runs when its *identity* has never been computed in this cache: its stage's
   behaviour version, the versions of the helpers and the values of the constants and tracked files
   it uses, the parameter values it reads and its inputs' content (from the reference run; so an
   upstream re-run that gives equal bytes re-runs nothing downstream). Comments and equivalent
   rewrites that change no value still re-run the rewritten stage, never its consumers. A needless
   re-run shows here.

Steps whose outcome is not exactly predictable (a kill, a flipped byte) check an upper bound only.
Used by tests/test_fuzz.py (a short run) and bench/fuzz.py (the long one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ORCH = [sys.executable, "-m", "orchestrator.cli"]
CACHERS = ("pickle", "json", "lazy", "file")


@dataclass
class StageSpec:
    name: str
    aggregate: bool
    inputs: list[tuple[str, bool]]  # (artifact, lazy)
    output: str
    cacher: str
    reads: list[str]  # parameter names (an aggregate reads them in every set)
    # (a, b): reads parameter b only when parameter a > 4 (a trace that depends on a value)
    conditional: tuple[str, str] | None
    helpers: list[int]
    consts: list[int]
    files: list[int]
    module: int  # which stages module it lives in
    version: int = 0  # behaviour: changes its output
    rewrite: int = 0  # equivalent rewrites: code changes, output does not
    cosmetic: int = 0  # comments: nothing changes


@dataclass
class ProjectSpec:
    stages: list[StageSpec]
    helper_version: list[int]
    helper_rewrite: list[int]
    helper_cosmetic: list[int]
    consts: list[int]
    files: list[int]
    params: dict[str, int]
    sweep: dict[str, list[int]]
    helper_calls: list[int | None]  # helper i also calls this helper (None: no other)
    access: list[str]  # per stages module: how it reaches helpers, "from" | "module" | "star"

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def helper_closure(self, helpers: list[int]) -> list[int]:
        """The helpers a stage's code reaches: those it calls and, transitively, those they call."""
        seen, todo = set(), list(helpers)
        while todo:
            h = todo.pop()
            if h not in seen:
                seen.add(h)
                if self.helper_calls[h] is not None:
                    todo.append(self.helper_calls[h])
        return sorted(seen)


def generate(rng: random.Random, max_stages: int = 30) -> ProjectSpec:
    n_params = rng.randint(1, 4)
    params = {f"p{i}": rng.randint(0, 9) for i in range(n_params)}
    sweep: dict[str, list[int]] = {}
    budget = rng.randint(1, 6)  # parameter sets
    for name in rng.sample(sorted(params), k=min(len(params), rng.randint(0, 2))):
        width = rng.randint(1, min(3, budget))
        if width > 1:
            sweep[name] = rng.sample(range(10, 40), width)
            budget //= width
    n_helpers, n_consts, n_files = rng.randint(1, 4), rng.randint(0, 3), rng.randint(0, 2)
    stages: list[StageSpec] = []
    produced: list[str] = []
    for i in range(rng.randint(3, max_stages)):
        aggregate = bool(produced) and rng.random() < 0.12
        pool = [a for a in produced if not a.startswith("g")]  # aggregates' outputs are sinks
        k = rng.randint(1, min(2, len(pool))) if pool and (aggregate or rng.random() < 0.8) else 0
        if aggregate and k == 0:
            aggregate = False
        inputs = [(a, rng.random() < 0.3) for a in rng.sample(pool, k)]
        name = f"{'g' if aggregate else 's'}{i}"
        stages.append(StageSpec(
            name=name, aggregate=aggregate, inputs=inputs, output=f"{name}_out", cacher=rng.choice(CACHERS),
            reads=rng.sample(sorted(params), k=rng.randint(0, min(2, len(params)))),
            conditional=tuple(rng.sample(sorted(params), 2)) if len(params) > 1 and rng.random() < 0.25 and not aggregate
            else None,
            helpers=rng.sample(range(n_helpers), k=rng.randint(0, min(2, n_helpers))),
            consts=rng.sample(range(n_consts), k=rng.randint(0, min(1, n_consts))),
            files=rng.sample(range(n_files), k=rng.randint(0, min(1, n_files))) if rng.random() < 0.3 else [],
            module=rng.randint(0, 1)))
        produced.append(f"{name}_out")
    calls = [rng.choice([None, rng.randrange(i)]) if i else None for i in range(n_helpers)]
    return ProjectSpec(stages, [0] * n_helpers, [0] * n_helpers, [0] * n_helpers,
                       [rng.randint(0, 99) for _ in range(n_consts)], [rng.randint(0, 99) for _ in range(n_files)],
                       params, sweep, calls, [rng.choice(["from", "module", "star"]) for _ in range(2)])



# -- rendering the project -------------------------------------------------------------------------

SUPPORT = '''
import os
from pathlib import Path


def ran(stage, set_name):
    """Every execution of a stage body, for the fuzzer's count."""
    with open(os.environ["FUZZ_LOG"], "a") as f:
        f.write(stage + "\\n")


def mix(v, x):
    return (v * 1000003 + int(x)) % 2147483647


def unwrap(value):
    if hasattr(value, "load"):
        value = value.load()
    if isinstance(value, (str, Path)):
        return int(Path(value).read_text())
    if isinstance(value, dict):
        return value["v"]
    return value


def wrap(record, kind, name, v):
    if kind == "json":
        return {"v": v}
    if kind == "file":
        path = record.get_path(name + ".txt")
        Path(path).write_text(str(v))
        return path
    return v
'''


def _helpers(spec: ProjectSpec) -> str:
    lines = ["from fz.support import mix\n"]
    for i, (ver, rew, cos) in enumerate(zip(spec.helper_version, spec.helper_rewrite, spec.helper_cosmetic)):
        lines.append(f"\ndef h{i}(x):\n")
        lines += [f"    # note {c}\n" for c in range(cos)]
        inner = f"h{spec.helper_calls[i]}(x)" if spec.helper_calls[i] is not None else "x"
        lines.append(f"    return mix({inner}, {7 + i * 13 + ver * 101}){' + 0 * ' + str(rew) if rew else ''}\n")
    return "".join(lines)


def _consts(spec: ProjectSpec) -> str:
    return "".join(f"C{i} = {v}\n" for i, v in enumerate(spec.consts)) or "NONE = 0\n"


def _stage_source(s: StageSpec, access: str) -> str:
    cacher = {"pickle": "PickleCacher", "json": "JsonCacher", "lazy": "PickleCacher", "file": "FileReferenceCacher"}[s.cacher]
    out = f'Lazy("{s.output}")' if s.cacher == "lazy" else f'"{s.output}"'
    ins = ", ".join(f'Lazy("{a}")' if lazy else f'"{a}"' for a, lazy in s.inputs)
    deco = "aggregate" if s.aggregate else "stage"
    args = "".join(f", {a}" for a, _ in s.inputs)
    body = [f"@{deco}(inputs=[{ins}], outputs=[{out}], cachers=[{cacher}])\n",
            f"def {s.name}(record{args}):\n"]
    body += [f"    # cosmetic {c}\n" for c in range(s.cosmetic)]
    body.append(f'    ran("{s.name}", record.name)\n')
    body.append(f"    v = {1000 + int(s.name[1:]) * 17 + s.version * 7919}{' + 0 * ' + str(s.rewrite) if s.rewrite else ''}\n")
    for p in s.reads:
        if s.aggregate:
            body.append(f"    for set_name in sorted(record.param_sets):\n        v = mix(v, record.param_sets[set_name].{p})\n")
        else:
            body.append(f"    v = mix(v, record.params.{p})\n")
    if s.conditional:
        a, b = s.conditional
        body.append(f"    if record.params.{a} > 4:\n        v = mix(v, record.params.{b})\n")
    for h in s.helpers:
        call = f"helpers.h{h}" if access == "module" else f"h{h}"
        body.append(f"    v = mix(v, {call}(v % 1000))\n")
    for c in s.consts:
        body.append(f"    v = mix(v, consts.C{c})\n")
    for f in s.files:
        body.append(f'    v = mix(v, Path(record.track("data/f{f}.txt")).read_text())\n')
    for a, _ in s.inputs:
        if s.aggregate:
            body.append(f"    for set_name in sorted({a}):\n        v = mix(v, unwrap({a}[set_name]) + len(set_name))\n")
        else:
            body.append(f"    v = mix(v, unwrap({a}))\n")
    body.append(f'    return wrap(record, "{s.cacher}", "{s.output}", v)\n')
    return "".join(body)


def render(spec: ProjectSpec, root: Path) -> None:
    """Write the project; only files whose text changed are rewritten (with a fresh mtime)."""
    files = {"fz/__init__.py": "", "fz/support.py": SUPPORT, "fz/helpers.py": _helpers(spec), "fz/consts.py": _consts(spec)}
    helpers = ", ".join(f"h{i}" for i in range(len(spec.helper_version)))
    reach = {"from": f"from fz.helpers import {helpers}\n", "module": "from fz import helpers\n",
             "star": "from fz.helpers import *  # noqa: F403\n"}
    modules = ["", ""]
    for s in spec.stages:
        modules[s.module] += "\n" + _stage_source(s, spec.access[s.module])
    for m, text in enumerate(modules):
        header = ("from pathlib import Path\n\nfrom orchestrator import FileReferenceCacher, JsonCacher, Lazy, "
                  "PickleCacher, aggregate, stage\n\nfrom fz import consts\n" + reach[spec.access[m]] +
                  "from fz.support import mix, ran, unwrap, wrap\n\n")
        files[f"fz/stages{m}.py"] = header + text
    per_set = [s.name for s in spec.stages if not s.aggregate]
    aggs = [s.name for s in spec.stages if s.aggregate]
    imports = "".join(f"from fz.stages{s.module} import {s.name}\n" for s in spec.stages)
    exp = imports + "\n\ndef run(record):\n" + "".join(f"    {n}(record)\n" for n in per_set) + ("    pass\n" if not per_set else "")
    if aggs:
        exp += "\n\ndef aggregate(records):\n" + "".join(f"    {n}(records)\n" for n in aggs)
    files["experiment.py"] = exp
    params = {"name": "fz", **spec.params}
    if spec.sweep:
        params["sweep"] = spec.sweep
    files["params.yaml"] = json.dumps(params) + "\n"
    for i, v in enumerate(spec.files):
        files[f"data/f{i}.txt"] = str(v)
    for rel, text in files.items():
        path = root / rel
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        _fresh_mtime(path)


def _fresh_mtime(path: Path) -> None:
    """A new mtime even within one clock tick, so stamp-keyed caches see the edit."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, max(time.time_ns(), st.st_mtime_ns + 1_000_000)))


# -- the oracle -------------------------------------------------------------------------------------

def identity(spec: ProjectSpec, row: dict, ref_rows: dict[int, dict], param_sets: dict[str, dict]) -> str:
    """What decides whether a node must run (see the module docstring); `row` is the reference run's."""
    s = spec.stage(row["stage"])
    inputs = sorted((e[0], e[3] if len(e) > 3 else "", ref_rows[e[1]]["outputs"][e[2]]) for e in row["inputs"])
    if s.aggregate:
        reads = {p: [param_sets[n].get(p) for n in sorted(param_sets)] for p in s.reads}
        sets = sorted(param_sets)
    else:
        values = param_sets[row["param_set"]]
        reads = {p: values.get(p) for p in s.reads}
        if s.conditional:
            a, b = s.conditional
            reads[a] = values.get(a)
            if values.get(a) > 4:
                reads[b] = values.get(b)
        sets = None
    helpers = [(h, spec.helper_version[h], spec.helper_rewrite[h]) for h in spec.helper_closure(s.helpers)]
    return json.dumps([s.name, s.version, s.rewrite, helpers,
                       [spec.consts[c] for c in s.consts], [spec.files[f] for f in s.files], reads, inputs, sets])


@dataclass
class Finding:
    seed: int
    step: int
    action: str
    what: str

    def __str__(self) -> str:
        return f"seed {self.seed} step {self.step} ({self.action}): {self.what}"


@dataclass
class Stats:
    sequences: int = 0
    steps: int = 0
    runs: int = 0
    nodes: int = 0
    actions: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)


class Sequence:
    """One random project and its edit sequence, run in `root`."""

    def __init__(self, seed: int, root: Path, stats: Stats, max_stages: int = 30):
        self.seed, self.root, self.stats = seed, root, stats
        self.rng = random.Random(seed)
        self.spec = generate(self.rng, max_stages)
        self.cache = root / "cache"
        self.log = root / "executions.log"
        self.seen: set[str] = set()
        self.last_ids: dict[tuple[str, str], str] = {}  # (stage, set) -> identity, as of the last step
        self._ref: tuple[str, dict] | None = None
        self.exact = True  # False after a step whose stored state is not predictable (a kill)

    # -- running orch
    def orch(self, *args: str, cache: Path | None = None, log: Path | None = None, timeout: float = 300):
        env = {**os.environ, "FUZZ_LOG": str(log or self.log), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("ORCH_CACHE", None)
        return subprocess.run([*ORCH, *args, "--cache", str(cache or self.cache)], cwd=self.root / "project",
                              env=env, capture_output=True, text=True, timeout=timeout)

    def executions(self) -> Counter:
        if not self.log.exists():
            return Counter()
        counts = Counter(self.log.read_text().split())
        self.log.unlink()
        return counts

    def reference(self) -> dict:
        """A from-scratch run of the current project in a fresh cache: its manifest (the previous
        one while no file of the project changed: orch is deterministic, so is its fresh run)."""
        digest = _project_digest(self.root / "project")
        if self._ref is not None and self._ref[0] == digest:
            return self._ref[1]
        with tempfile.TemporaryDirectory(dir=self.root) as d:
            proc = self.orch("run", "experiment.py", "-p", "params.yaml", "-q", cache=Path(d) / "cache",
                             log=Path(d) / "log")
            self.stats.runs += 1
            if proc.returncode != 0:
                raise RuntimeError(f"seed {self.seed}: the reference run failed:\n{proc.stdout}\n{proc.stderr}")
            manifest = json.loads((Path(d) / "cache" / "runs" / "latest" / "manifest.json").read_text())
        self._ref = (digest, manifest)
        return manifest

    # -- the sequence
    def run(self, steps: int) -> None:
        render(self.spec, self.root / "project")
        self.stats.sequences += 1
        self.step(0, "first run", [])
        for i in range(1, steps + 1):
            self.act(i)

    def act(self, i: int) -> None:
        rng, spec = self.rng, self.spec
        action = rng.choice(["param", "sweep", "stage", "stage-rewrite", "stage-cosmetic", "helper", "helper-rewrite",
                             "helper-cosmetic", "const", "file", "file-same", "overwrite", "kill", "flip", "entry",
                             "nothing"])
        extra: list[str] = []
        if action == "param":
            p = rng.choice(sorted(spec.params))
            spec.params[p] = (spec.params[p] + rng.randint(1, 5)) % 10
        elif action == "sweep" and spec.sweep:
            p = rng.choice(sorted(spec.sweep))
            values = spec.sweep[p]
            values[rng.randrange(len(values))] = rng.choice([v for v in range(10, 60) if v not in values])
        elif action.startswith("stage"):
            s = rng.choice(spec.stages)
            if action == "stage":
                s.version += 1
            elif action == "stage-rewrite":
                s.rewrite += 1
            else:
                s.cosmetic += 1
        elif action.startswith("helper"):
            h = rng.randrange(len(spec.helper_version))
            {"helper": spec.helper_version, "helper-rewrite": spec.helper_rewrite,
             "helper-cosmetic": spec.helper_cosmetic}[action][h] += 1
        elif action == "const" and spec.consts:
            c = rng.randrange(len(spec.consts))
            spec.consts[c] = (spec.consts[c] + rng.randint(1, 50)) % 100
        elif action == "file-same" and spec.files:
            path = self.root / "project" / "data" / f"f{rng.randrange(len(spec.files))}.txt"
            path.write_text(path.read_text())  # same bytes, new mtime: nothing may re-run
            _fresh_mtime(path)
        elif action == "file" and spec.files:
            f = rng.randrange(len(spec.files))
            spec.files[f] = (spec.files[f] + rng.randint(1, 50)) % 100
        elif action == "overwrite":
            extra = ["--overwrite-stage", rng.choice(spec.stages).name]
        if rng.random() < 0.3:
            extra.append("--parallel=2")
        render(spec, self.root / "project")
        if action == "kill":
            self.kill()
        elif action == "flip":
            self.flip(i)
            return
        elif action == "entry":
            self.malform_entry()
        self.step(i, action, extra)

    def step(self, i: int, action: str, extra: list[str]) -> None:
        self.stats.steps += 1
        self.stats.actions[action] += 1
        ref = self.reference()
        proc = self.orch("run", "experiment.py", "-p", "params.yaml", "-q", *extra)
        self.stats.runs += 1
        ran = self.executions()
        if proc.returncode != 0:
            self.fail(i, action, f"orch run exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
            return
        manifest = json.loads((self.cache / "runs" / "latest" / "manifest.json").read_text())
        self.check(i, action, ref, manifest, ran, forced=extra[1] if extra[:1] == ["--overwrite-stage"] else None)

    def check(self, i: int, action: str, ref: dict, manifest: dict, ran: Counter, forced: str | None,
              slack: set[str] = frozenset()) -> None:
        ref_rows = {n["id"]: n for n in ref["nodes"]}
        got = {(n["stage"], n["param_set"]): n for n in manifest["nodes"]}
        self.stats.nodes += len(ref["nodes"])
        for n in ref["nodes"]:
            mine = got.get((n["stage"], n["param_set"]))
            if mine is None or mine["outputs"] != n["outputs"]:
                self.fail(i, action, f"WRONG ARTIFACT {n['stage']}[{n['param_set']}]: {mine and mine['outputs']} "
                                     f"!= fresh {n['outputs']}")
        ids = {n["id"]: identity(self.spec, n, ref_rows, ref["param_sets"]) for n in ref["nodes"]}
        # --overwrite-stage S redoes S and everything downstream, each computation once
        hit = {n["id"] for n in ref["nodes"] if n["stage"] == forced}
        for n in ref["nodes"]:  # topological order
            if any(e[1] in hit for e in n["inputs"]):
                hit.add(n["id"])
        expected = Counter()
        for n in ref["nodes"]:
            expected.setdefault(n["stage"], 0)
        for stage in expected:
            mine = [n for n in ref["nodes"] if n["stage"] == stage]
            expected[stage] = len({ids[n["id"]] for n in mine if n["id"] in hit}
                                  | ({ids[n["id"]] for n in mine if n["id"] not in hit} - self.seen))
        for stage in sorted(set(expected) | set(ran)):
            if stage in slack:
                continue
            if self.exact and ran[stage] != expected[stage] or not self.exact and ran[stage] > expected[stage]:
                self.fail(i, action, f"{stage} executed {ran[stage]} times, the key rules say {expected[stage]}"
                                     + ("" if self.exact else " at most"))
        self.seen |= set(ids.values())
        self.last_ids = {(n["stage"], n["param_set"]): ids[n["id"]] for n in ref["nodes"]}
        self.exact = True

    def fail(self, i: int, action: str, what: str) -> None:
        self.stats.findings.append(Finding(self.seed, i, action, what))

    # -- faults
    def kill(self) -> None:
        """Start a run and kill -9 its process group at a random moment; the next run is checked
        with an upper bound only (what finished before the kill is not known)."""
        env = {**os.environ, "FUZZ_LOG": str(self.log), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([*ORCH, "run", "experiment.py", "-p", "params.yaml", "-q", "--cache", str(self.cache)],
                                cwd=self.root / "project", env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(self.rng.uniform(0.05, 1.2))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self.executions()  # what the killed run executed is not counted
        self.exact = False

    def flip(self, i: int) -> None:
        """Flip a byte of a stored output of a node that a forced consumer must load: the damage is
        found, the object quarantined, its producer re-run; no wrong value anywhere."""
        manifest = json.loads((self.cache / "runs" / "latest" / "manifest.json").read_text())
        rows = {n["id"]: n for n in manifest["nodes"]}
        pairs = [(rows[e[1]], n) for n in manifest["nodes"] for e in n["inputs"]]
        if not pairs:
            self.step(i, "flip (nothing to flip)", [])
            return
        producer, consumer = self.rng.choice(pairs)
        digest = next(iter(producer["outputs"].values()))
        target = next((self.cache / "objects" / digest[:2]).glob(digest[2:] + "*"))
        target.chmod(0o644)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 1
        target.write_bytes(bytes(data))
        _fresh_mtime(target)
        self.step_with_slack(i, ["--overwrite-stage", consumer["stage"]], {producer["stage"], consumer["stage"]})

    def step_with_slack(self, i: int, extra: list[str], slack: set[str]) -> None:
        self.stats.steps += 1
        self.stats.actions["flip"] += 1
        ref = self.reference()
        proc = self.orch("run", "experiment.py", "-p", "params.yaml", "-q", *extra)
        self.stats.runs += 1
        ran = self.executions()
        if proc.returncode != 0:
            self.fail(i, "flip", f"orch run exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
            return
        manifest = json.loads((self.cache / "runs" / "latest" / "manifest.json").read_text())
        self.check(i, "flip", ref, manifest, ran, forced=extra[1], slack=slack)
        verify = self.orch("cache", "verify")
        if verify.returncode != 0 or "0 damaged" not in verify.stdout:
            self.fail(i, "flip", f"a damaged object is still in the store after the run:\n{verify.stdout}{verify.stderr}")

    def malform_entry(self) -> None:
        """Garble the entry of a random node: that computation is a miss, so it runs once more."""
        manifest = json.loads((self.cache / "runs" / "latest" / "manifest.json").read_text())
        rows = [n for n in manifest["nodes"] if n.get("key") and n.get("trace")]
        if not rows:
            return
        row = self.rng.choice(rows)
        path = self.cache / "entries" / row["key"][:2] / row["key"] / f"{row['trace']}.json"
        path.write_text(self.rng.choice(['{"format": 1, "key": 3', "", "[]", '{"format": 1}']))
        self.seen.discard(self.last_ids[(row["stage"], row["param_set"])])


def _project_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()


def fuzz(seeds, steps: int, workdir: Path, max_stages: int = 30, stats: Stats | None = None) -> Stats:
    stats = stats or Stats()
    for seed in seeds:
        root = workdir / f"seed-{seed}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        Sequence(seed, root, stats, max_stages).run(steps)
        if not stats.findings or stats.findings[-1].seed != seed:
            shutil.rmtree(root, ignore_errors=True)  # keep only what reproduces a finding
    return stats
