"""`orch status [RUN]`: where each node of a run stands, Slurm jobs included (a detached run's above all).

The run's manifest says what the head saw (ran, cached, failed, skipped, or pending when it detached
or was interrupted); `runs/<id>/slurm.json` (executors.slurm) names the job of each submitted node;
Slurm says where those jobs are now: squeue while it holds them, then sacct. A job that completed is
"done" only if its result says the node succeeded (a stage that raised completes its job too); a node
not submitted is "blocked" when something upstream failed, else "waiting" for the next `orch run`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from ..core.status import Status
from ..fsutil import read_json_object
from .manifest import read_manifest, resolve_run


@dataclass
class NodeState:
    label: str
    state: str  # cached, ran, done, failed, skipped, queued, running, waiting
    job: str = ""
    node: str = ""
    detail: str = ""


def run_status(cache_root: Path, run: str = "latest") -> tuple[dict, list[NodeState]]:
    """(the run's manifest, one NodeState per node in node order)."""
    manifest = read_manifest(cache_root, run)
    jobs_file = read_json_object(resolve_run(cache_root, run) / "slurm.json") or {}
    jobs: dict[str, str] = jobs_file.get("jobs") or {}
    folder = Path(jobs_file.get("folder") or Path(cache_root) / "slurm" / "jobs")
    slurm = _job_states(sorted(set(jobs.values()))) if jobs else {}
    states, by_id = [], {}
    for row in manifest.get("nodes", []):
        label = f"{row['stage']}[{row['param_set']}]"
        job = jobs.get(label, "")
        if row["status"] != Status.PENDING:
            states.append(NodeState(label, row["status"], job))
        elif not job:
            failed = [by_id[p].label for p in _producers(row) if p in by_id and by_id[p].state in ("failed", "blocked")]
            states.append(NodeState(label, "blocked", detail=f"upstream {failed[0]} failed") if failed else
                          NodeState(label, "waiting", detail="not submitted: its inputs were not stored yet; "
                                                             "`orch run` again submits it once they are"))
        else:
            state, node = slurm.get(job, ("UNKNOWN", ""))
            ours, detail = _meaning(state, folder / job)
            states.append(NodeState(label, ours, job=job, node=node, detail=detail))
        by_id[row.get("id")] = states[-1]
    return manifest, states


def _producers(row: dict) -> list:
    """The node ids a manifest row's inputs come from ([input, producer, output(, set)] each)."""
    return [edge[1] for edge in row.get("inputs") or [] if isinstance(edge, list) and len(edge) > 1]


def _job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    from ..executors.slurmctl import ended_jobs, queued_jobs

    queued = queued_jobs()
    known = {j: queued[j] for j in job_ids if j in queued}
    known.update(ended_jobs([j for j in job_ids if j not in queued]))
    return known


def _meaning(state: str, job_dir: Path) -> tuple[str, str]:
    """(our state, a detail) of a Slurm state and the job's result file."""
    if state in ("PENDING", "REQUEUED", "CONFIGURING"):
        return "queued", ""
    if state in ("RUNNING", "COMPLETING", "SUSPENDED"):
        return "running", ""
    if state == "COMPLETED":
        return _result_state(job_dir)
    if state == "UNKNOWN":
        return "unknown", "Slurm knows no such job any more"
    return "failed", f"job {state.lower()}"


def _result_state(job_dir: Path) -> tuple[str, str]:
    results = sorted(job_dir.glob("*_result.pkl"))
    if not results:
        return "failed", "the job completed without a result"
    with open(results[0], "rb") as f:
        outcome, value = pickle.load(f)  # submitit's ("success" | "error", value)
    if outcome != "success":
        return "failed", "the job failed before running the node"
    result = pickle.loads(value[1])
    if result.status == Status.FAILED:
        return "failed", f"{result.error_type}: {result.error.splitlines()[0] if result.error else ''}"
    return "done", ""
