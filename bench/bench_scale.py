"""10,000 nodes (100 parameter sets x 100 chained stages): first run and fully cached re-run,
wall time and peak RSS of the whole `orch run` process.

Goal: first <= 15 s, cached <= 1.5 s, <= 500 MB; the run's HTML report (written at the end
of every run, timed here on its own) well under a second.
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


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
