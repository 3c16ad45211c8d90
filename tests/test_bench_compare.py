"""bench/compare.py --quick: the side-by-side suite's orch half still runs (a smoke test of a few
seconds; the anchors and the full sizes are for `python bench/compare.py`, not CI)."""

import sys
from pathlib import Path

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


def test_ab_times_a_first_run_of_two_checkouts_in_alternation():
    """bench/ab.py's first-run workload runs end to end (a smoke test; the timings are for people)."""
    import subprocess

    repo = BENCH.parent
    proc = subprocess.run([sys.executable, str(BENCH / "ab.py"), "--code", str(repo), "--code", str(repo),
                           "--only", "chain200-first", "--reps", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("chain200-first") and "paired B/A" in proc.stdout
