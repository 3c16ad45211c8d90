"""orch side by side with curifactory 0.20.5, Hamilton and joblib.Memory: the same workloads, whole
processes, run in alternation (A B C D A B C D ...) so that a noisy machine slows all tools alike.

    python bench/compare.py [--reps N] [--only WORKLOAD ...] [--tools orch,joblib,...]
    python bench/compare.py --quick        # orch only, small sizes, a few seconds: a smoke test

The anchors are installed from PyPI into venvs under bench/.venvs (git-ignored; created on first use).
Every workload is a chain of distinct functions/stages, each adding 1 to its input, the first reading
a `seed` parameter; N sets x M stages means M-long chains for N seeds. For every tool:

- "cached": the workload was run before; time a run that finds everything cached;
- "first (deleted)": the previous cache is deleted (rm -rf) just before the timed run, as a user
  clearing a cache would: the kernel still pays for the deletion during the run. On ext4 without a
  journal (these VMs' root filesystem: the results' "env" says which filesystem) that cost is large
  and depends on everything deleted in the last minutes (bench/bench_fs.py); TMPDIR=DIR runs the
  workloads on another filesystem;
- "first (moved)": the previous cache is renamed away instead (deleted after all repetitions).

Results: medians of wall-clock and CPU (user+sys of the child) seconds, and the median of the paired
ratios other/orch (each ratio from the same repetition), to bench/results.json; `--markdown` prints
the table for BENCHMARKS.md. Bytecode caching is on (PYTHONDONTWRITEBYTECODE unset), as users have it.

Hamilton: a chain longer than ~1,000 nodes exceeds Python's default recursion limit in its graph
walk, so the generated driver raises it (sys.setrecursionlimit(100_000)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_env, env_info, write_chain_project  # noqa: E402
from instructions import SETTLE_S, console_script  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
#: venv name -> what pip installs into it (numpy/pandas: what the anchors need at import)
ANCHORS = {"curifactory": ["curifactory==0.20.5"], "hamilton": ["apache-hamilton", "pandas", "numpy"],
           "joblib": ["joblib", "numpy"]}
TOOLS = ["orch", "curifactory", "hamilton", "joblib"]
#: name -> (sets, stages, mode); mode: cached | deleted | moved
WORKLOADS = {
    "chain200-cached": (1, 200, "cached"),
    "chain200-first-deleted": (1, 200, "deleted"),
    "chain200-first-moved": (1, 200, "moved"),
    "chain1000-first": (1, 1000, "moved"),
    "10k-cached": (100, 100, "cached"),
    "10k-first": (100, 100, "moved"),
}
QUICK = {"chain20-cached": (1, 20, "cached"), "2x10-first": (2, 10, "moved")}
LABELS = {
    "chain200-cached": "chain of 200 stages, fully cached",
    "chain200-first-deleted": "chain of 200, first run, previous cache deleted just before",
    "chain200-first-moved": "chain of 200, first run, previous cache moved away",
    "chain1000-first": "chain of 1,000, first run (cache moved away)",
    "10k-cached": "10,000 nodes (100 sets x 100), fully cached",
    "10k-first": "10,000 nodes, first run (cache moved away)",
}


# -- the same workload for each tool -----------------------------------------------------------------

def write_orch(root: Path, sets: int, stages: int) -> tuple[list[str], str]:
    write_chain_project(root, stages, sets=sets)
    script = console_script(ORCH_CODE[0], root.with_name(root.name + "-bin"))  # the `orch` command users run
    return [ORCH_PYTHON[0], str(script), "run", "experiment.py", "-p", "params/p.yaml", "-q"], ".orch"


def write_joblib(root: Path, sets: int, stages: int) -> tuple[list[str], str]:
    lines = ["import joblib", "mem = joblib.Memory('cache', verbose=0)", "",
             "@mem.cache", "def s0(seed):", "    return seed", ""]
    for i in range(1, stages):
        lines += ["@mem.cache", f"def s{i}(x):", "    return x + 1", ""]
    _module(root, "chain.py", lines)
    _module(root, "run.py", ["from chain import *", "", f"for seed in range({sets}):", "    x = s0(seed)",
                             *[f"    x = s{i}(x)" for i in range(1, stages)]])
    return [str(VENVS / "joblib" / "bin" / "python"), "run.py"], "cache"


def write_hamilton(root: Path, sets: int, stages: int) -> tuple[list[str], str]:
    funcs = ["def x0(seed: int) -> int:", "    return seed", ""]
    for i in range(1, stages):
        funcs += [f"def x{i}(x{i - 1}: int) -> int:", f"    return x{i - 1} + 1", ""]
    _module(root, "funcs.py", funcs)
    _module(root, "run.py", [
        "import sys", "sys.setrecursionlimit(100_000)  # Hamilton walks the graph recursively",
        "from hamilton import driver", "import funcs", "",
        "dr = driver.Builder().with_modules(funcs).with_cache(path='cache').build()",
        f"for seed in range({sets}):", f"    dr.execute(['x{stages - 1}'], inputs={{'seed': seed}})"])
    return [str(VENVS / "hamilton" / "bin" / "python"), "run.py"], "cache"


def write_curifactory(root: Path, sets: int, stages: int) -> tuple[list[str], str]:
    (root / "experiments").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "curifactory_config.json").write_text(json.dumps({
        "experiments_module_name": "experiments", "params_module_name": "params",
        "manager_cache_path": "data/", "cache_path": "data/cache", "runs_path": "data/runs",
        "logs_path": "logs/", "notebooks_path": "notebooks/", "reports_path": "reports/",
        "report_css_path": "reports/style.css"}))
    _module(root / "experiments", "__init__.py", [])
    _module(root / "params", "__init__.py", [])
    stage_lines = ["from dataclasses import dataclass", "import curifactory as cf",
                   "from curifactory.caching import PickleCacher", "", "@dataclass",
                   "class Params(cf.ExperimentParameters):", "    seed: int = 0", "",
                   "@cf.stage(inputs=None, outputs=['x0'], cachers=[PickleCacher])", "def s0(record):",
                   "    return record.params.seed", ""]
    for i in range(1, stages):
        stage_lines += [f"@cf.stage(inputs=['x{i - 1}'], outputs=['x{i}'], cachers=[PickleCacher])",
                        f"def s{i}(record, x{i - 1}):", f"    return x{i - 1} + 1", ""]
    _module(root / "experiments", "stages.py", stage_lines)
    _module(root / "experiments", "chain.py", [
        "import curifactory as cf", "from experiments.stages import *", "",
        "def get_params():", f"    return [Params(name=f'p{{i}}', seed=i) for i in range({sets})]", "",
        "def run(param_sets, manager):", "    for p in param_sets:", "        r = cf.Record(manager, p)",
        *[f"        r = s{i}(r)" for i in range(stages)]])
    return [str(VENVS / "curifactory" / "bin" / "experiment"), "chain", "--no-dag"], "data/cache"


def _module(d: Path, name: str, lines: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("\n".join(lines) + "\n")


WRITERS = {"orch": write_orch, "joblib": write_joblib, "hamilton": write_hamilton, "curifactory": write_curifactory}


# -- running -----------------------------------------------------------------------------------------

#: What `pip install orch` brings besides orch: the venv orch is measured in (orch itself comes from
#: PYTHONPATH, the --code checkout). Not the development venv: its editable install of orch adds an
#: import hook to every start-up (~20 ms: pathlib, urllib.parse, importlib.util) that users of an
#: installed orch do not pay, and the anchors are measured as installed too.
ORCH_DEPS = ["click>=8.1", "pyyaml>=6"]
#: The python orch runs with: this one for --quick (no venv to create), else bench/.venvs/orch's.
ORCH_PYTHON = [sys.executable]


def ensure_venvs(tools: list[str]) -> None:
    for name in tools:
        deps = ORCH_DEPS if name == "orch" else ANCHORS[name]
        if name == "orch":
            ORCH_PYTHON[0] = str(VENVS / "orch" / "bin" / "python")
        if (VENVS / name / ".installed").exists():
            continue
        print(f"creating bench/.venvs/{name} ({' '.join(deps)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
        subprocess.run([str(VENVS / name / "bin" / "pip"), "install", "-q", *deps], check=True)
        (VENVS / name / ".installed").touch()


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s of the child and its children) of one run; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


#: The checkout whose orch is measured (--code; default: this one), whatever is installed.
ORCH_CODE = [REPO]


def _env() -> dict:
    env = bench_env()  # bytecode caching on
    env["PYTHONPATH"] = str(ORCH_CODE[0])
    return env


def run_workload(name: str, spec: tuple, tools: list[str], reps: int, tmp: Path) -> dict:
    sets, stages, mode = spec
    projects = {}
    for tool in tools:
        root = tmp / name / tool
        cmd, cache = WRITERS[tool](root, sets, stages)
        timed(cmd, root)  # warm: bytecode written, and the cache a cached run finds
        projects[tool] = (root, cmd, root / cache)
    if mode == "cached":  # steady state, as when a user re-runs: orch's entry index and parsed parameters
        time.sleep(SETTLE_S)  # (store.entryindex keeps entries older than 2 s)
        for tool in tools:
            timed(projects[tool][1], projects[tool][0])
    samples: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    trash = tmp / "trash"
    for rep in range(reps):
        for tool in tools:
            root, cmd, cache = projects[tool]
            if mode == "deleted":
                shutil.rmtree(cache)
            elif mode == "moved":
                trash.mkdir(exist_ok=True)
                os.rename(cache, trash / f"{name}-{tool}-{rep}")
            samples[tool].append(timed(cmd, root))
            print(f"  {name} {tool} rep {rep + 1}: {samples[tool][-1][0]:.3f} s wall, "
                  f"{samples[tool][-1][1]:.3f} s CPU", flush=True)
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp / name, ignore_errors=True)
    out = {}
    for tool, s in samples.items():
        out[tool] = {"wall_s": [round(w, 4) for w, _ in s], "cpu_s": [round(c, 4) for _, c in s],
                     "median_wall_s": round(statistics.median(w for w, _ in s), 4),
                     "median_cpu_s": round(statistics.median(c for _, c in s), 4)}
        if tool != "orch" and "orch" in samples:
            ratios = [w / o for (w, _), (o, _) in zip(s, samples["orch"])]
            out[tool]["paired_ratio_to_orch"] = round(statistics.median(ratios), 2)
            cpu_ratios = [c / o for (_, c), (_, o) in zip(s, samples["orch"])]
            out[tool]["paired_cpu_ratio_to_orch"] = round(statistics.median(cpu_ratios), 2)
    return out


def revision(checkout: Path) -> str:
    """The commit of the orch measured ("+changes" when its package differs from it), for the record."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "orchestrator") else "")


def python_pass(reps: int) -> dict:
    """`orch --help` against `python -c pass`, paired (the start-up goal is a multiple of the latter)."""
    cwd = Path(tempfile.mkdtemp())
    orch = [ORCH_PYTHON[0], str(console_script(ORCH_CODE[0], cwd)), "--help"]  # the `orch` command
    helps, passes = [], []
    for _ in range(reps):
        helps.append(timed(orch, cwd)[0])
        passes.append(timed([ORCH_PYTHON[0], "-c", "pass"], cwd)[0])
    return {"median_help_s": round(statistics.median(helps), 4), "median_pass_s": round(statistics.median(passes), 4),
            "paired_ratio": round(statistics.median(h / p for h, p in zip(helps, passes)), 2)}


def markdown(results: dict) -> str:
    tools = [t for t in TOOLS if any(t in r for r in results["workloads"].values())]
    head = "| workload | " + " | ".join(tools) + " |\n| --- |" + " --- |" * len(tools)
    rows = []
    h = results.get("help")
    if h:
        rows.append(f"| `orch --help` (vs `python -c pass`: {h['median_pass_s']:.3f} s) | {h['median_help_s']:.3f} s "
                    f"= {h['paired_ratio']:.1f} x | " + " | ".join("-" for _ in tools[1:]) + " |")
    for name, r in results["workloads"].items():
        cells = []
        for t in tools:
            if t not in r:
                cells.append("-")
                continue
            c = f"{r[t]['median_wall_s']:.2f} s ({r[t]['median_cpu_s']:.2f} s CPU)"
            if t != "orch" and "orch" in r:
                wall = statistics.median(w / o for w, o in zip(r[t]["wall_s"], r["orch"]["wall_s"]))
                cpu = statistics.median(c / o for c, o in zip(r[t]["cpu_s"], r["orch"]["cpu_s"]))
                c += f": **{wall:.1f} x** orch ({cpu:.1f} x CPU)"
            cells.append(c)
        rows.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


#: What a run of this script writes into its results file. Everything else there (the `runs` history
#: of earlier rounds, other scripts' sections) is kept as it was: a run with --only used to replace
#: the whole file, history included.
OWN_KEYS = ("env", "reps", "big_reps", "tools", "load_average_at_start", "workloads", "help", "load_average_at_end")


def kept_results(path: Path, merge: bool) -> dict:
    """What of the results file at `path` a new run keeps: the sections it does not write, and with
    `merge` also the workloads (and `help`) measured before. An unreadable file keeps nothing."""
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(existing, dict):
        return {}
    return {k: v for k, v in existing.items() if k not in OWN_KEYS or merge and k in ("workloads", "help")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="orch only, small sizes, no results file")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the chain-200 workloads")
    ap.add_argument("--big-reps", type=int, default=3, help="repetitions of the chain-1000 and 10k workloads")
    ap.add_argument("--code", type=Path, help="measure the orch of this checkout (default: this one)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--json", type=Path, default=HERE / "results.json")
    ap.add_argument("--markdown", action="store_true", help="print the table for BENCHMARKS.md")
    ap.add_argument("--merge", action="store_true", help="add to the workloads already in --json")
    args = ap.parse_args(argv)
    tools = ["orch"] if args.quick else [t for t in args.tools.split(",") if t]
    workloads = QUICK if args.quick else {n: WORKLOADS[n] for n in (args.only or WORKLOADS)}
    reps = 1 if args.quick else args.reps
    if args.code:
        ORCH_CODE[0] = args.code.resolve()
    ensure_venvs([t for t in tools if t != "orch" or not args.quick])
    previous = kept_results(args.json, args.merge)
    results = {"env": env_info(), "reps": reps, "big_reps": args.big_reps, "tools": tools,
               "load_average_at_start": os.getloadavg(), "workloads": previous.get("workloads", {}),
               **{k: v for k, v in previous.items() if k not in OWN_KEYS}}
    with tempfile.TemporaryDirectory(prefix="orch-compare-") as tmp:
        if not args.quick:
            results["help"] = python_pass(reps) if "help" not in previous else previous["help"]
        for name, spec in workloads.items():
            print(f"== {name}", flush=True)
            n = reps if spec[0] * spec[1] <= 200 or args.quick else args.big_reps
            results["workloads"][name] = {**run_workload(name, spec, tools, n, Path(tmp)), "code": revision(ORCH_CODE[0])}
            if not args.quick:  # partial results survive an interrupted run
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    if not args.quick:
        results["load_average_at_end"] = os.getloadavg()
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown or args.quick:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
