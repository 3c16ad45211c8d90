"""The job side of `--executor slurm`: what a Slurm job (or one task of a job array) runs.

submitit pickles `run_job` by reference with its arguments; the job's python (the head's own
interpreter, with the head's orch first on PYTHONPATH: executors.slurm writes that into the job
script) imports this module, sets itself up as a worker (executors.worker) and runs one node
against the shared cache. It returns where it ran with the pickled TaskResult, which travels back
in submitit's result pickle: in-memory outputs come back that way, stored ones are in the cache.
Kept apart from executors.slurm so that a job imports neither the head's machinery nor submitit's
executor side.
"""

from __future__ import annotations

import os
import socket

from .worker import WorkerConfig, init_worker, run_encoded


def job_id_from_env() -> str:
    """This job's id as sacct shows it: "123" or, for a task of an array, "120_3"."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "?")


def run_job(config: WorkerConfig, node_id: int, payload: bytes) -> tuple[dict, bytes]:
    """Run one node in this job; never raises for anything a node can cause (the result says)."""
    where = {"job": job_id_from_env(), "host": socket.gethostname().split(".")[0]}
    init_worker(config, where=f"Slurm job {where['job']} on {where['host']}")
    return where, run_encoded(node_id, payload)
