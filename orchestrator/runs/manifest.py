"""Run records: `runs/<run-id>/manifest.json` in the cache directory, and `runs/latest`.

The manifest is written once with status "running" when the run starts (so a killed run still
leaves a trace) and once more when it ends; both writes are atomic renames.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from ..fsutil import atomic_write_json


def new_run_id() -> str:
    """Sortable by start time to the millisecond (runs list newest first), unique by a random tail."""
    now = datetime.now()
    return now.strftime("%Y%m%d-%H%M%S") + f".{now.microsecond // 1000:03d}-" + secrets.token_hex(2)


class RunLog:
    def __init__(self, cache_root: Path, experiment: str, param_sets: dict, argv: list[str] | None = None):
        self.run_id = new_run_id()
        self.runs_dir = Path(cache_root) / "runs"
        self.dir = self.runs_dir / self.run_id
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir(parents=True)
        self.manifest = {
            "run_id": self.run_id,
            "experiment": experiment,
            "argv": argv or [],
            "started": _now(),
            "finished": None,
            "status": "running",
            "param_sets": param_sets,
            "nodes": [],
        }
        self._t0 = time.perf_counter()
        atomic_write_json(self.dir / "manifest.json", self.manifest)
        _point_latest(self.runs_dir, self.run_id)

    def finish(self, status: str, nodes: list[dict], summary: dict) -> None:
        self.manifest.update(finished=_now(), status=status, nodes=nodes, summary=summary,
                             duration_s=round(time.perf_counter() - self._t0, 4))
        atomic_write_json(self.dir / "manifest.json", self.manifest)


def node_record(outcome) -> dict:
    node, entry = outcome.node, outcome.entry or {}
    rec = {
        "id": node.id,
        "stage": node.stage.name,
        "stage_id": node.stage.id,
        "param_set": node.set_name,
        "status": outcome.status,
        "key": outcome.key,
        "reason": outcome.reason,
        "duration_s": round(outcome.duration, 6),
        "inputs": [[e.input, e.producer, e.output] + ([e.set_name] if e.set_name else []) for e in node.inputs],
        "outputs": {name: out["object"]["hash"] for name, out in entry.get("outputs", {}).items()},
        "reads": {path: r.get("v") for path, r in entry.get("reads", {}).items()},
        "files": entry.get("files", {}),
    }
    if outcome.status == "failed":
        rec["error"] = f"{outcome.error_type}: {outcome.error}"
        rec["traceback"] = outcome.traceback
    if outcome.skipped_because:
        rec["skipped_because"] = outcome.skipped_because
    return rec


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _point_latest(runs_dir: Path, run_id: str) -> None:
    """`runs/latest` is a symlink swapped atomically (a plain file naming the run where links fail)."""
    tmp = runs_dir / f".latest.{os.getpid()}.{secrets.token_hex(3)}"
    try:
        os.symlink(run_id, tmp)
    except OSError:
        tmp.write_text(run_id)
    os.replace(tmp, runs_dir / "latest")


def resolve_run(cache_root: Path, run: str = "latest") -> Path:
    from ..errors import RunNotFoundError

    runs_dir = Path(cache_root) / "runs"
    path = runs_dir / run
    if run == "latest" and path.is_file() and not path.is_symlink():
        path = runs_dir / path.read_text().strip()
    if not (path / "manifest.json").is_file():
        known = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
        raise RunNotFoundError(
            f"no run {run!r} in {runs_dir}" + (f"; runs: {', '.join(known[-10:])}" if known else "; nothing has run yet")
        )
    return path.resolve()
