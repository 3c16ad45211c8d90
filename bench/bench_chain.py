"""Cached re-run of a chain of 200 stages (whole process), first run, and per-stage overhead.

Goal: fully cached 200-stage chain <= 0.2 s; orch overhead per executed stage <= 1 ms.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ORCH, bench_env, env_info, time_cli, write_chain_project  # noqa: E402


def main(stages: int = 200) -> None:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        root = write_chain_project(Path(tmp) / "proj", stages)
        args = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
        t0 = time.perf_counter()
        subprocess.run(ORCH + args, cwd=root, check=True, capture_output=True, env=bench_env())
        first = time.perf_counter() - t0
        cached_med, cached_min, _ = time_cli(args, root, repeat=7)
        help_med, help_min, _ = time_cli(["--help"], root, repeat=7)
        # Per-stage overhead: in-process, so interpreter start-up and imports do not count.
        overhead = per_stage_overhead(Path(tmp) / "inproc", 500)
    print(f"[{env_info()}]")
    print(f"orch --help:                        median {help_med*1000:.0f} ms (min {help_min*1000:.0f} ms)")
    print(f"chain of {stages}, first run (process): {first:.2f} s")
    print(f"chain of {stages}, fully cached (process): median {cached_med*1000:.0f} ms (min {cached_min*1000:.0f} ms)")
    print(f"orch overhead per executed stage:   {overhead*1000:.3f} ms (500 distinct stages, in-process, beyond pickling)")


def per_stage_overhead(root: Path, stages: int) -> float:
    """In-process and warm (a first tiny run pays the imports) on a cache in use (its 256-way shard
    directories exist; a brand-new cache pays ~1,000 mkdirs once): wall time of a first run of a
    chain of `stages` distinct stages -- planning, fingerprinting, locking, saving, hashing,
    entries, manifest, report -- per stage, minus what pickling the outputs costs by itself."""
    import pickle

    from orchestrator import session

    cache = root / "cache"
    for area in ("objects", "entries", "locks", "refs"):  # a cache in use: its shard directories exist
        for i in range(256):
            (cache / area / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    warm = write_chain_project(root / "warm", 3)
    sys.path.insert(0, str(warm))
    session.run_experiment(session.RunOptions(experiment=warm / "experiment.py", params=[str(warm / "params/p.yaml")],
                                   cache=cache))
    for name in [m for m in sys.modules if m == "experiment" or m.split(".")[0] == "stages"]:
        del sys.modules[name]
    sys.path.remove(str(warm))
    proj = write_chain_project(root / "proj", stages)
    sys.path.insert(0, str(proj))
    opts = session.RunOptions(experiment=proj / "experiment.py", params=[str(proj / "params/p.yaml")], cache=cache)
    t0 = time.perf_counter()
    result = session.run_experiment(opts)
    total = time.perf_counter() - t0
    assert not result.failed
    t0 = time.perf_counter()
    for i in range(stages):
        with open(proj / f"pickle-{i}", "wb") as f:
            pickle.dump(i, f, protocol=5)
    save = time.perf_counter() - t0
    return (total - save) / stages


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
