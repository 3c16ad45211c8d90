"""`--executor slurm` on the local single-node cluster (tests/slurm/start-cluster.sh): a 100-point
sweep of a trivial cached stage, submitted as job arrays (the default) and as one job per node
(ORCH_SLURM_MAX_ARRAY=1), fresh cache each time.

Two figures per mode: submission (`--detach`: plan, submit every point, record, return; minus the
same command with `--dry`, which plans only), per node; and the whole attached run until every point
is stored. The stage does nothing, so the second figure is Slurm's and the job start-up's (a Python
interpreter importing orch and the experiment per job), bounded here by the node's CPUs: what orch adds
is the first figure. Skips (exit 0) when no cluster answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ORCH, bench_env, env_info  # noqa: E402

POINTS = 100


def write_project(root: Path, points: int) -> None:
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "__init__.py").write_text("")
    (root / "stages" / "sweep.py").write_text(
        "from orchestrator import stage, PickleCacher\n\n"
        "@stage(outputs=['y'], cachers=[PickleCacher], resources={'cpus': 1, 'time': '00:10:00'})\n"
        "def square(record):\n    return record.params.x ** 2\n")
    (root / "experiment.py").write_text("from stages.sweep import square\n\ndef run(record):\n    square(record)\n")
    (root / "p.yaml").write_text(f"x: 0\nsweep:\n  x: [{', '.join(str(i) for i in range(points))}]\n")


def orch(root: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(ORCH + ["run", "experiment.py", "-p", "p.yaml", *args], cwd=root, capture_output=True,
                          text=True, env={**bench_env(), **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def measure(mode: str, env: dict) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        write_project(root, POINTS)
        dry, _ = orch(root, "--executor", "slurm", "--dry", env=env)
        detach, stdout = orch(root, "--executor", "slurm", "--detach", env=env)
        out["submissions"] = len(re.findall(r"^submitted ", stdout, re.M))
        out["submit_per_node_ms"] = (detach - dry) / POINTS * 1000
        ids = re.search(r"in flight \(([^)]*)\)", stdout).group(1).split()
        subprocess.run(["scancel", *ids], check=True)  # cancelled: the attached run below starts afresh
        shutil.rmtree(root / ".orch")
        total, _ = orch(root, "--executor", "slurm", env=env)
        out["total_s"] = total
    print(f"{mode:<16} {out['submissions']:>4} sbatch  submit {out['submit_per_node_ms']:6.1f} ms/node  "
          f"all {POINTS} stored in {out['total_s']:6.1f} s", flush=True)
    return out


def main() -> int:
    if shutil.which("sinfo") is None or subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode:
        print("skipped: no Slurm cluster (sudo tests/slurm/start-cluster.sh)")
        return 0
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    print(f"{env_info()}; single-node Slurm with {cpus} CPUs; {POINTS}-point sweep, trivial stage")
    measure("job arrays", {})
    measure("one job each", {"ORCH_SLURM_MAX_ARRAY": "1"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
