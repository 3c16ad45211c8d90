"""bench/compare.py --quick: the side-by-side suite's orch half still runs (a smoke test of a few
seconds; the anchors and the full sizes are for `python bench/compare.py`, not CI)."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_compare_quick_runs(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import compare
    finally:
        sys.path.remove(str(BENCH))
    assert compare.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| workload | orch |" in out and "chain20-cached" in out


@pytest.mark.parametrize("workload, extra", [("chain200-first", []), ("run1-cached", ["--shared"])])
def test_ab_times_two_checkouts_in_alternation(workload, extra):
    """bench/ab.py runs a first-run workload, and a cached one on one shared project, end to end, with
    the same checkout as A and B (a smoke test; the timings are for people)."""
    import subprocess

    repo = BENCH.parent
    proc = subprocess.run([sys.executable, str(BENCH / "ab.py"), "--code", str(repo), "--code", str(repo),
                           "--only", workload, "--reps", "2", *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(workload) and "paired B/A" in proc.stdout
