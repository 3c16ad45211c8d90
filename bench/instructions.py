"""Instruction counts of whole `orch` processes under callgrind: deterministic, unlike wall-clock time
on a shared machine, so an A/B decision about an optimization rests on them.

    python bench/instructions.py [--code DIR ...] [--only NAME ...]

Each --code DIR is a checkout whose `orchestrator` package is put first on PYTHONPATH (default: this
repository); every workload is measured for every DIR, in alternation, each in its own project and
cache. Needs valgrind.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_env, write_chain_project  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RUN = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
#: name -> (stages, sets, cached?, argv)
WORKLOADS = {
    "help": (0, 0, False, ["--help"]),
    "chain200-cached": (200, 1, True, RUN),
    "chain200-first": (200, 1, False, RUN),
    "1k-cached": (100, 10, True, RUN),
    "1k-first": (100, 10, False, RUN),
}


def count(code: Path, argv: list[str], cwd: Path) -> int:
    """Instructions executed by `python -m orchestrator.cli ARGV` (the process and its children)."""
    env = bench_env() | {"PYTHONPATH": str(code)}
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           sys.executable, "-m", "orchestrator.cli", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return int(m.group(1))


def measure(code: Path, name: str, tmp: Path) -> int:
    stages, sets, cached, argv = WORKLOADS[name]
    root = tmp / f"{name}-{abs(hash(str(code)))}"
    shutil.rmtree(root, ignore_errors=True)
    if stages:
        write_chain_project(root, stages, sets=sets)
    else:
        root.mkdir(parents=True)
    env = bench_env() | {"PYTHONPATH": str(code)}
    # One plain run first: bytecode written (users have .pyc files) and, for "cached", the results.
    subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=root, env=env, check=True,
                   capture_output=True)
    if not cached and stages:
        shutil.rmtree(root / ".orch")
    return count(code, argv, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", type=Path, help="checkout(s) to compare (default: this one)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    args = ap.parse_args()
    codes = [c.resolve() for c in (args.code or [REPO])]
    names = args.only or list(WORKLOADS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            counts = [measure(code, name, Path(tmp)) for code in codes]
            ratio = f"  ratio {counts[-1] / counts[0]:.3f}" if len(counts) > 1 else ""
            print(f"{name:18s} " + "  ".join(f"{c / 1e6:9.1f} M" for c in counts) + ratio, flush=True)


if __name__ == "__main__":
    main()
