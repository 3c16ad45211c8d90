"""8 parameter sets whose stage sleeps 1 s: speedup of `--parallel 4` and of `mpiexec -n 5` (4 worker
ranks) over a sequential run, fresh cache each time, median of runs. Two figures: wall time of the
whole command (process start-up included: 5 interpreters for MPI) and the run itself as orch
reports it (loading, planning, scheduling, all stages, manifest).

The stage reads its parameter and has no inputs, so all 8 nodes share one cache key and differ only
in their trace: the case where a key-wide lock would serialize them (see orchestrator/lockscope.py).

Goal: >= 3.5x for both (curifactory: 2.7x with 4 processes, no MPI).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ORCH, bench_env, env_info  # noqa: E402

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))


def write_project(root: Path, sets: int = 8, seconds: float = 1.0) -> Path:
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "__init__.py").write_text("")
    (root / "stages" / "sleepy.py").write_text(
        "import time\nfrom orchestrator import stage, JsonCacher\n\n"
        "@stage(outputs=['x'], cachers=[JsonCacher])\n"
        "def sleepy(record):\n"
        f"    time.sleep({seconds})\n"
        "    return record.params.i\n")
    (root / "experiment.py").write_text("from stages.sleepy import sleepy\n\ndef run(record):\n    sleepy(record)\n")
    (root / "params").mkdir()
    (root / "params" / "p.yaml").write_text(f"i: 0\nsweep:\n  i: {list(range(sets))}\n")
    return root


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(whole command, the run as orch reports it) in seconds."""
    shutil.rmtree(cwd / ".orch", ignore_errors=True)  # every run computes all 8 nodes
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=bench_env())
    elapsed = time.perf_counter() - t0
    found = re.search(r"8 ran in ([0-9.]+)s", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, float(found.group(1))


def main(repeat: int = 3) -> None:
    args = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
    variants = {
        "sequential": ORCH + args,
        "--parallel 4": ORCH + args + ["--parallel", "4"],
        "mpiexec -n 5": [MPIEXEC, "-n", "5", sys.executable, "-m", "mpi4py", "-m", "orchestrator.cli"] + args,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = write_project(Path(tmp) / "proj")
        results = {}
        for name, cmd in variants.items():
            runs = [timed(cmd, root) for _ in range(repeat)]
            results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    print(f"[{env_info()}] 8 sets x 1 s stage, median of {repeat}")
    print(f"{'':<14} {'whole command':>22}   {'run (orch summary)':>22}")
    seq_wall, seq_run = results["sequential"]
    for name, (wall, run) in results.items():
        print(f"{name:<14} {wall:6.2f} s  speedup {seq_wall / wall:4.2f}x   {run:6.2f} s  speedup {seq_run / run:4.2f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
