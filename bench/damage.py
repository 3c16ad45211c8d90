"""The whole damage sweep (tests/damager.py): every file of a project's cache, damaged in every way
the sweep knows, one case at a time, through the real CLI; prints each finding, writes them as JSON.

    python bench/damage.py --jobs 2 --json damage.json     # 2 files of each kind (--per-kind)

tests/test_damaged_cache.py runs a sample of these cases on every `make test`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from damager import Sweep, kind_of  # noqa: E402


def _worker(args: tuple[int, int, str, str, int]) -> dict:
    """Cases number `part`, `part + jobs`, ... in a sweep of their own (each worker its own project)."""
    part, jobs, workdir, only, per_kind = args
    sweep = Sweep(Path(workdir) / f"worker-{part}")
    files_of: dict[str, list[str]] = {}
    for rel in sweep.files:
        files_of.setdefault(kind_of(rel), []).append(rel)
    chosen = {rel for files in files_of.values() for rel in files[:per_kind]}
    cases = findings = 0
    found = []
    for i, (rel, damage, data) in enumerate(c for c in sweep.cases() if c[0] in chosen):
        if i % jobs != part or (only and only not in rel):
            continue
        cases += 1
        for f in sweep.check(rel, damage, data):
            findings += 1
            found.append(str(f))
            print(f"FINDING {f}", flush=True)
    return {"cases": cases, "findings": findings, "found": found, "files": len(sweep.files)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="only files whose path in the cache contains this")
    ap.add_argument("--per-kind", type=int, default=2, help="files damaged of each kind (entries, heads, objects...)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp, ProcessPoolExecutor(a.jobs) as pool:
        parts = list(pool.map(_worker, [(i, a.jobs, tmp, a.only, a.per_kind) for i in range(a.jobs)]))
    total = {"files": parts[0]["files"], "cases": sum(p["cases"] for p in parts),
             "findings": [f for p in parts for f in p["found"]], "seconds": round(time.time() - start, 1)}
    print(f"{total['cases']} cases over {total['files']} files, {len(total['findings'])} findings, {total['seconds']} s")
    if a.json:
        Path(a.json).write_text(json.dumps(total, indent=1) + "\n")
    return 1 if total["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
