"""Run every benchmark in turn (`make bench`); figures go to stdout, to be copied into BENCHMARKS.md.

Run on a quiet machine: the numbers are wall-clock times on 2 cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = ["bench_chain.py", "bench_scale.py", "bench_report.py", "bench_hashing.py", "bench_parallel.py",
           "bench_slurm.py", "compare.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
