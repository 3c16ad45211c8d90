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
