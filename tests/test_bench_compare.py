"""bench/compare.py --quick: the side-by-side suite's orch half still runs (a smoke test of a few
seconds; the anchors and the full sizes are for `python bench/compare.py`, not CI)."""

import json
import subprocess
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
    assert compare.revision(BENCH.parent).split("+")[0] == subprocess.run(
        ["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("workload, extra", [("chain200-first", []), ("run1-cached", ["--shared"]), ("chain200-once", [])])
def test_ab_times_two_checkouts_in_alternation(workload, extra):
    """bench/ab.py runs a first-run workload, the run right after one, and a cached one on one shared project, end to end, with
    the same checkout as A and B (a smoke test; the timings are for people)."""
    import subprocess

    repo = BENCH.parent
    proc = subprocess.run([sys.executable, str(BENCH / "ab.py"), "--code", str(repo), "--code", str(repo),
                           "--only", workload, "--reps", "2", *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(workload) and "paired B/A" in proc.stdout


def test_filesystem_names_the_mount_a_path_is_on_and_bench_fs_measures_it(tmp_path):
    """bench/common.filesystem: the longest mount point above a path gives its type (benchmarks print
    it: first runs depend on it); bench_fs.py's measurements run in a directory of that filesystem."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_fs
        from common import filesystem
    finally:
        sys.path.remove(str(BENCH))
    assert filesystem("/proc/self") == "proc at /proc"
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    if mounts.get("/dev/shm") == "tmpfs":
        assert filesystem("/dev/shm") == "tmpfs at /dev/shm"
    here = filesystem(str(tmp_path))
    assert here.split()[0] in set(mounts.values())
    ops = bench_fs.per_op(str(tmp_path / "ops"), n=20)
    assert set(ops) == {"mkdir (a key's directory)", "create + write + close", "rename into place",
                        "link (a head)", "stat", "listdir of a missing directory"}
    assert all(us > 0 for us in ops.values())
    fresh, after = bench_fs.create_after_delete(str(tmp_path / "cad"), n=20)
    assert fresh > 0 and after > 0 and not (tmp_path / "cad" / "a").exists()


def test_compare_keeps_the_history_of_its_results_file(tmp_path):
    """A run of compare.py (say --only one workload) replaces what it measures, never the `runs`
    history of earlier rounds or other scripts' sections; --merge keeps the earlier workloads too."""
    sys.path.insert(0, str(BENCH))
    try:
        import compare
    finally:
        sys.path.remove(str(BENCH))
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"env": "old", "workloads": {"10k-cached": {"orch": 1}}, "help": {"x": 1},
                                "runs": {"round 11": {"a": 1}}, "growth": [1, 2]}))
    assert compare.kept_results(path, merge=False) == {"runs": {"round 11": {"a": 1}}, "growth": [1, 2]}
    assert compare.kept_results(path, merge=True) == {"workloads": {"10k-cached": {"orch": 1}}, "help": {"x": 1},
                                                      "runs": {"round 11": {"a": 1}}, "growth": [1, 2]}
    path.write_text("{not json")
    assert compare.kept_results(path, merge=False) == {}
    assert compare.kept_results(tmp_path / "missing.json", merge=True) == {}
