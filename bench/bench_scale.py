"""10,000 nodes (100 parameter sets x 100 chained stages): first run and fully cached re-run,
wall time and peak RSS of the whole `orch run` process.

Goal: first <= 15 s, cached <= 1.5 s, <= 500 MB; the run's HTML report (written at the end
of every run, timed here on its own) well under a second.

`--growth [SETS ...]` (default 10 100 1000, i.e. 1k / 10k / 100k nodes of 100-stage chains): the
cost per node of a first and a cached run at each size, wall and CPU time and the peak RSS of each
process, so that a step that grows faster than the node count shows as a rising per-node cost.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import env_info, time_cli, write_chain_project  # noqa: E402


def main(sets: int = 100, stages: int = 100) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_chain_project(Path(tmp) / "proj", stages, sets=sets)
        args = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
        first, _, rss_first = time_cli(args, root, repeat=1)
        cached, cached_min, rss = time_cli(args, root, repeat=3)
        report = time_report(root / ".orch" / "runs" / "latest" / "manifest.json")
    print(f"[{env_info()}]")
    print(f"{sets * stages} nodes ({sets} sets x {stages} stages): first run {first:.2f} s (peak RSS {rss_first / 1024:.0f} MB)")
    print(f"{sets * stages} nodes, fully cached: median {cached:.2f} s (min {cached_min:.2f} s), peak RSS {rss / 1024:.0f} MB")
    print(f"{sets * stages} nodes, writing the run's HTML report: median {report * 1000:.0f} ms")


def time_report(manifest_path: Path, repeat: int = 7) -> float:
    """Median seconds of write_report on a real manifest (the run does this once at its end)."""
    import json
    import statistics
    import time

    from orchestrator.runs.report import write_report

    manifest = json.loads(manifest_path.read_text())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        write_report(manifest, manifest_path.with_name("report-bench.html"))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_once(args: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS KiB) of one orch process, from its own rusage (os.wait4)."""
    import os
    import subprocess
    import time

    from common import ORCH, bench_env

    t0 = time.perf_counter()
    proc = subprocess.Popen(ORCH + args, cwd=cwd, env=bench_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def growth(set_counts: list[int], stages: int = 100, cached_repeat: int = 2) -> list[dict]:
    """One first run and `cached_repeat` cached runs per size (the best cached run is kept)."""
    import json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sets in set_counts:
            root = write_chain_project(Path(tmp) / f"proj{sets}", stages, sets=sets)
            args = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
            first = run_once(args, root)
            cached = min((run_once(args, root) for _ in range(cached_repeat)), key=lambda r: r[1])
            n = sets * stages
            row = {"nodes": n, "first_wall_s": first[0], "first_cpu_s": first[1], "first_rss_mb": first[2] / 1024,
                   "cached_wall_s": cached[0], "cached_cpu_s": cached[1], "cached_rss_mb": cached[2] / 1024}
            rows.append(row)
            print(json.dumps(row), flush=True)
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    print(f"[{env_info()}]")
    print("| nodes | first: wall (CPU) | per node (CPU) | peak RSS | cached: wall (CPU) | per node (CPU) | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        n = r["nodes"]
        print(f"| {n:,} | {r['first_wall_s']:.1f} s ({r['first_cpu_s']:.1f} s) | {r['first_cpu_s'] / n * 1e6:.0f} us "
              f"| {r['first_rss_mb']:.0f} MB | {r['cached_wall_s']:.2f} s ({r['cached_cpu_s']:.2f} s) "
              f"| {r['cached_cpu_s'] / n * 1e6:.0f} us | {r['cached_rss_mb']:.0f} MB |")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--growth"]:
        growth([int(a) for a in sys.argv[2:]] or [10, 100, 1000])
    else:
        main(*(int(a) for a in sys.argv[1:3]))
