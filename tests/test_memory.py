"""Bounded memory: an artifact lives only until its last consumer in the run has finished, and a
cached artifact is never loaded unless a running stage consumes it (BENCHMARKS.md: chain of 10 x 200 MB
arrays under 600 MB peak RSS; curifactory holds all of them, 2.36 GB)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ORCH

MB = 1024 * 1024
ARRAY_MB = 200
LIMIT_MB = 3 * ARRAY_MB


def chain(project, cacher: str = "NumpyCacher", bump: float = 1.0) -> None:
    lines = ["import numpy as np", f"from orchestrator import stage, {cacher}", "",
             f"N = {ARRAY_MB * MB // 8}  # {ARRAY_MB} MB of float64", "",
             f"@stage(outputs=['a0'], cachers=[{cacher}])", "def s0(record):", "    return np.full(N, 1.0)", ""]
    for i in range(1, 10):
        step = bump if i == 6 else 1.0
        lines += [f"@stage(inputs=['a{i-1}'], outputs=['a{i}'], cachers=[{cacher}])",
                  f"def s{i}(record, a{i-1}):", f"    return a{i-1} + {step}", ""]
    project.write("stages/chain.py", "\n".join(lines))
    project.write("experiment.py", "from stages.chain import *\n\ndef run(record):\n"
                  + "".join(f"    s{i}(record)\n" for i in range(10)))


def peak_rss_mb(project, *args: str) -> tuple[float, str]:
    """Run `orch` from a fresh intermediate process so RUSAGE_CHILDREN sees only that child."""
    code = (
        "import json, resource, subprocess, sys\n"
        f"p = subprocess.run({ORCH!r} + sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout + p.stderr,\n"
        "                  'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=project.root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["rc"] == 0, res["out"]
    return res["kb"] / 1024, res["out"]


@pytest.mark.timeout(300)
def test_chain_of_ten_200mb_arrays_stays_under_600mb(project):
    pytest.importorskip("numpy")
    chain(project)
    peak, out = peak_rss_mb(project, "run", "experiment.py")
    assert "10 ran" in out
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB for a chain of 10 x {ARRAY_MB} MB arrays"
    # at least one input and one output were alive together: the measurement measures something
    assert peak > 2 * ARRAY_MB * 0.9

    # fully cached: nothing is loaded at all
    peak, out = peak_rss_mb(project, "run", "experiment.py")
    assert "10 cached" in out
    assert peak < ARRAY_MB / 2, f"a fully cached run peaked at {peak:.0f} MB: it loaded artifacts"

    # a change in the middle: the first re-run stage loads its input from the store, the rest chain in memory
    chain(project, bump=2.0)
    peak, out = peak_rss_mb(project, "run", "experiment.py")
    assert "4 ran, 6 cached" in out
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB when re-running the tail of the chain"
