"""Past runs, read back from their manifests: `orch runs`, `orch show` and `orch why --run`."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RunNotFoundError
from .manifest import resolve_run


def list_runs(cache_root: Path, limit: int = 20) -> list[dict]:
    """The newest runs first: id, start, status, duration and node counts."""
    runs_dir = Path(cache_root) / "runs"
    if not runs_dir.is_dir():
        return []
    rows = []
    for d in sorted((p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True)[:limit]:
        m = _read(d / "manifest.json")
        if m is None:
            continue
        rows.append({
            "run_id": m.get("run_id", d.name),
            "started": m.get("started", ""),
            "status": m.get("status", "?"),
            "duration_s": m.get("duration_s"),
            "param_sets": len(m.get("param_sets", {})),
            "summary": m.get("summary") or {},
            "experiment": m.get("experiment", ""),
        })
    return rows


def load_manifest(cache_root: Path, run: str = "latest") -> dict:
    path = resolve_run(cache_root, run) / "manifest.json"
    m = _read(path)
    if m is None:
        raise RunNotFoundError(f"the manifest of run {run!r} ({path}) cannot be read")
    return m


def why_rows(manifest: dict, stage: str | None = None, param_set: str | None = None) -> list[dict]:
    """Nodes of a past run that did not come from the cache, with the reason each one ran."""
    rows = []
    for n in manifest.get("nodes", []):
        if stage and n["stage"] != stage or param_set and n["param_set"] != param_set:
            continue
        if n["status"] == "cached":
            continue
        reason = n.get("reason") or ""
        if n["status"] == "skipped":
            reason = f"upstream {n.get('skipped_because', '?')} failed"
        elif n["status"] == "failed":
            reason = f"{reason}; failed: {n.get('error', '')}" if reason else f"failed: {n.get('error', '')}"
        rows.append({"stage": n["stage"], "param_set": n["param_set"], "status": n["status"], "reason": reason})
    return rows


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
