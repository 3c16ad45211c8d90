"""The long run of the differential fuzzer (tests/fuzzer.py): many random projects and edit
sequences, in parallel worker processes; prints the totals and every finding, writes them as JSON.

    python bench/fuzz.py --sequences 1000 --steps 5 --jobs 2 --json bench/fuzz-results.json

A finding names its seed and step: `python bench/fuzz.py --first SEED --sequences 1 --workdir DIR`
replays it; the project of a sequence with a finding is kept under DIR/seed-SEED to look at.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzer import Stats, fuzz  # noqa: E402


def _chunk(args: tuple[list[int], int, int, str]) -> dict:
    seeds, steps, max_stages, workdir = args
    stats = fuzz(seeds, steps, Path(workdir), max_stages)
    return {"sequences": stats.sequences, "steps": stats.steps, "runs": stats.runs, "nodes": stats.nodes,
            "actions": dict(stats.actions), "findings": [str(f) for f in stats.findings]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100)
    ap.add_argument("--first", type=int, default=0, help="first seed")
    ap.add_argument("--steps", type=int, default=5, help="edits per sequence (after the first run)")
    ap.add_argument("--max-stages", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    opts = ap.parse_args()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="orch-fuzz-"))
    seeds = list(range(opts.first, opts.first + opts.sequences))
    chunks = [seeds[i:i + 10] for i in range(0, len(seeds), 10)]
    t0 = time.perf_counter()
    total = Stats()
    findings: list[str] = []
    done: list[int] = []
    with ProcessPoolExecutor(opts.jobs) as pool:
        futures = {pool.submit(_chunk, (c, opts.steps, opts.max_stages, str(workdir))): c for c in chunks}
        for future in as_completed(futures):
            part = future.result()
            done += futures[future]
            total.sequences += part["sequences"]
            total.steps += part["steps"]
            total.runs += part["runs"]
            total.nodes += part["nodes"]
            total.actions.update(Counter(part["actions"]))
            findings += part["findings"]
            print(f"{total.sequences}/{len(seeds)} sequences, {len(findings)} findings, "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            _write(opts.json, _result(total, findings, time.perf_counter() - t0, seeds, done, opts))  # partial
    result = _result(total, findings, time.perf_counter() - t0, seeds, done, opts)
    print(json.dumps(result, indent=1))
    _write(opts.json, result)
    sys.exit(1 if findings else 0)


def _result(total: Stats, findings: list[str], seconds: float, seeds: list[int], done: list[int], opts) -> dict:
    return {"sequences": total.sequences, "steps": total.steps, "orch_runs": total.runs,
            "nodes_checked": total.nodes, "actions": dict(sorted(total.actions.items())), "findings": findings,
            "seconds": round(seconds, 1), "seeds_asked": [seeds[0], seeds[-1]],
            "seeds_done": _ranges(sorted(done)), "steps_per_sequence": opts.steps,
            "max_stages": opts.max_stages}


def _ranges(seeds: list[int]) -> list[list[int]]:
    """Finished seeds as [first, last] ranges, so a run stopped early says exactly what it covered."""
    out: list[list[int]] = []
    for s in seeds:
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _write(path: Path | None, result: dict) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)


if __name__ == "__main__":
    main()
