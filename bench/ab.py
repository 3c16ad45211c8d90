"""Paired A/B timing of two checkouts on a noisy machine: the same workloads, whole processes, run in
alternation (A B A B ...), each checkout in its own copy of the project and cache. Reports medians of
wall and CPU time (user + sys of the child) and the median of the paired ratios B/A (each from one
round), which cancels most of the load that comes and goes on a shared machine.

    python bench/ab.py --code A_DIR --code B_DIR [--reps N] [--only NAME ...]

Workloads: "python-pass" (`python -c pass`), "orch-help" (the `orch` console script of each
checkout's pyproject.toml, `--help`), and fully cached runs of chain/sweep projects (`orch run`
through that same console script, as users run it; "run1-cached": one stage, `orch run`'s start-up;
"chain200-repo-cached": that chain at the top of a repository with a research pyproject.toml); a cached
workload is prepared by a first run and, 2.5 s later, a cached run (what a user re-running an
experiment has: the entry index and the parsed parameters of store.entryindex and parsecache).
"100k-cached" (~2 min to prepare per checkout) runs only when named with --only.
First runs ("-first"): before each timed run the previous cache is renamed away (deleted after the
last round, so no deletion's kernel work lands in a timed run). "-once": the run right after a first
run (which is not timed), as a user re-runs a sweep just done; the project's sources are older than
the racy windows of orch's caches, as a user's are. "100k-" workloads run only when named with --only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_env, make_repository, write_chain_project  # noqa: E402
from instructions import SETTLE_S, console_script  # noqa: E402

RUN = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
#: name -> (stages, sets)
WORKLOADS = {"python-pass": (0, 0), "orch-help": (0, 0), "run1-cached": (1, 1), "chain200-cached": (200, 1),
             "chain200-repo-cached": (200, 1),
             "1k-cached": (100, 10), "10k-cached": (100, 100), "100k-cached": (100, 1000),
             "chain200-first": (200, 1), "1k-first": (100, 10), "10k-first": (100, 100),
             "chain200-once": (200, 1), "1k-once": (100, 10), "10k-once": (100, 100), "100k-once": (100, 1000)}


def prepare(code: Path, name: str, root: Path, bin_dir: Path | None = None) -> list[str]:
    """The command of workload `name` for checkout `code`, its project made at `root` (and cached
    workloads run once). With `bin_dir`, `root` already holds the project another checkout prepared
    (--shared): only this checkout's console script is made and its cached run done."""
    stages, sets = WORKLOADS[name]
    shared = bin_dir is not None
    if not shared:
        root.mkdir(parents=True)
    if name == "python-pass":
        return [sys.executable, "-c", "pass"]
    bin_dir = bin_dir or root.with_name(root.name + "-bin")  # the `orch` console script, outside the project
    if name == "orch-help":
        return [sys.executable, str(console_script(code, bin_dir)), "--help"]
    if not shared:
        write_chain_project(root, stages, sets=sets)
        if "-repo-" in name:
            make_repository(root)
    cmd = [sys.executable, str(console_script(code, bin_dir)), *RUN]
    if name.endswith("-once"):
        time.sleep(SETTLE_S)
    if name.endswith(("-first", "-once")):
        return cmd
    env = bench_env() | {"PYTHONPATH": str(code)}
    if not shared:
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
        time.sleep(SETTLE_S)
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return cmd


def timed(cmd: list[str], code: Path, cwd: Path) -> tuple[float, float]:
    env = bench_env() | {"PYTHONPATH": str(code), "COLUMNS": "100"}
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{cmd} failed in {cwd}: {err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--shared", action="store_true",
                    help="cached workloads: both checkouts run on one project and cache (when both read the same "
                         "cache format), so no difference between two copies' places on disk shows as theirs")
    args = ap.parse_args()
    codes = [c.resolve() for c in args.code]  # (A, B), indexed 0 and 1: the same checkout twice is an A/A run
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or [w for w in WORKLOADS if not w.startswith("100k")]:  # 100k: asked for by name
            shared = args.shared and not name.endswith(("-first", "-once"))
            projects = [Path(tmp) / f"{name}-0", Path(tmp) / (f"{name}-0" if shared else f"{name}-1")]
            cmds = [prepare(codes[0], name, projects[0]),
                    prepare(codes[1], name, projects[1], Path(tmp) / f"{name}-1-bin" if shared else None)]
            results: list[list[tuple[float, float]]] = [[], []]
            trash = Path(tmp) / "trash"
            for r in range(args.reps):
                for i in (0, 1) if r % 2 == 0 else (1, 0):  # A B B A: no checkout is always second
                    project = projects[i]
                    if name.endswith(("-first", "-once")) and (project / ".orch").exists():
                        trash.mkdir(exist_ok=True)
                        (project / ".orch").rename(trash / f"{project.name}-{r}")
                    if name.endswith("-once"):
                        timed(cmds[i], codes[i], project)  # the first run
                    results[i].append(timed(cmds[i], codes[i], project))
            shutil.rmtree(trash, ignore_errors=True)
            (wa, ca), (wb, cb) = ((statistics.median(w for w, _ in r), statistics.median(u for _, u in r)) for r in results)
            wall_ratio = statistics.median(rb[0] / ra[0] for ra, rb in zip(*results))
            cpu_ratio = statistics.median(rb[1] / ra[1] for ra, rb in zip(*results))
            print(f"{name:16s} A {wa:7.3f} s ({ca:.3f} s CPU)   B {wb:7.3f} s ({cb:.3f} s CPU)"
                  f"   paired B/A: wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
