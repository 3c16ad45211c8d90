"""The job side of `--executor slurm`: what a Slurm job (or one task of a job array) runs.

submitit pickles `run_job` by reference with its arguments; the job's python (the head's own
interpreter, with the head's orch first on PYTHONPATH: executors.slurm writes that into the job
script) imports this module, puts the run's code snapshot first on its path (executors.slurmcode),
sets itself up as a worker (executors.worker) and runs one node against the shared cache. It returns
where it ran with the pickled TaskResult, which travels back in submitit's result pickle: in-memory
outputs come back that way, stored ones are in the cache.
Kept apart from executors.slurm so that a job imports neither the head's machinery nor submitit's
executor side.
"""

from __future__ import annotations

import os
import pickle
import socket

from ..core.status import Status
from ..resources import DEFAULT_REQUEUE
from .slurmcode import Snapshot, activate, job_roots
from .task import TaskResult, import_stage
from .worker import WorkerConfig, init_worker, run_encoded


def job_id_from_env() -> str:
    """This job's id as sacct shows it: "123" or, for a task of an array, "120_3"."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "?")


class RequeueLimitReached(Exception):
    """Raised into the stage when its job is warned of its end once more than it may be requeued."""


def run_job(config: WorkerConfig, node_id: int, payload: bytes, snapshot: Snapshot | None = None,
            max_requeue: int = DEFAULT_REQUEUE) -> tuple[dict, bytes]:
    """Run one node in this job, from the run's code snapshot (executors.slurmcode) when it has one;
    never raises for anything a node can cause (the result says)."""
    where = {"job": job_id_from_env(), "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]}
    _requeue_on_warning(max_requeue)
    _own_allocation()
    if snapshot is not None:
        activate(snapshot)
        config = WorkerConfig(config.store_root, snapshot.experiment)
    init_worker(config, where=f"Slurm job {where['job']} on {where['host']}")
    changed = _changed_since_planned(payload, snapshot)
    if changed:
        return where, pickle.dumps(TaskResult(node_id, Status.FAILED, error_type="CodeChangedError", error=changed),
                                   protocol=pickle.HIGHEST_PROTOCOL)
    return where, run_encoded(node_id, payload)


def _own_allocation() -> None:
    """A job of several nodes runs its stage here, once; a torchrun launch in it spreads over them all
    (executors.slurmlaunch)."""
    from .slurmlaunch import NODES_VAR

    nodes = os.environ.get("SLURM_JOB_NUM_NODES", "1")
    if nodes.isdigit() and int(nodes) > 1:
        os.environ[NODES_VAR] = nodes


def _requeue_on_warning(max_requeue: int) -> None:
    """Slurm warns a job before its time limit (and, where configured, before preemption) with
    SIGUSR2 (submitit asks for it 90 s ahead). Then: requeue this job and leave at once, writing
    nothing (os._exit: a stage catching exceptions cannot turn it into a result; the kernel drops the
    node lock); the job runs the node again from the start, and a stage that checkpoints into
    record.checkpoint_dir() resumes there. After `max_requeue` requeues, the stage is interrupted with
    RequeueLimitReached instead: the node fails, saying so. Replaces submitit's handler, which
    would raise SystemExit into the stage."""
    import signal
    import subprocess
    import sys

    def warned(signum, frame):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        job = os.environ.get("SLURM_JOB_ID", "")
        if restarts < max_requeue and job:
            print(f"orch: Slurm warned job {job_id_from_env()} of its end (time limit or preemption): requeued "
                  f"({restarts + 1} of at most {max_requeue})", file=sys.stderr, flush=True)
            subprocess.run(["scontrol", "requeue", job], timeout=60, check=False)
            os._exit(3)
        raise RequeueLimitReached(
            f"Slurm job {job_id_from_env()} was warned of its end (time limit or preemption) after {restarts} "
            f"requeue(s), the limit: give the stage more time (resources={{'time': ...}}, --slurm-time) or more "
            f"requeues (resources={{'requeue': N}}), and checkpoint into record.checkpoint_dir() to resume")

    signal.signal(signal.SIGUSR2, warned)


def _changed_since_planned(payload: bytes, snapshot: Snapshot | None) -> str:
    """Why the stage this job imported is not the one the head planned (its key covers the code it
    fingerprinted), or "". A job may start hours after submission: if the stage was edited meanwhile,
    running it would store the new code's result under the old code's key, a wrong cache hit for
    every later run. Refused instead, saying so (the next run plans, and submits, the new code)."""
    from ..hashing import hash_value
    from ..hashing.fingerprints import Fingerprinter

    try:
        task = pickle.loads(payload)
        stage = import_stage(task.stage_ref)
    except Exception:  # run_encoded unpickles and imports again, and reports this as the node's failure
        return ""
    planned = task.components
    if planned is None or task.code_roots is None:  # an uncached stage: no key to protect
        return ""
    roots = job_roots(task.code_roots, snapshot)
    now = {"code": Fingerprinter(roots).fingerprint(stage.fn), "declaration": hash_value(stage.declaration()),
           "version": stage.version}
    was = {"code": planned.code, "declaration": planned.decl, "version": planned.version}
    differ = [name for name in now if now[name] != was[name]]
    if not differ:
        return ""
    return (f"stage {task.label}: its {' and '.join(differ)} changed between submission and the start of this job "
            f"({stage.fn.__code__.co_filename}); not run, so that the new code's result is never stored under the "
            f"key of the code that was planned: run again (the new code is planned and submitted)")
