"""torchrun across the nodes of a multi-node Slurm job of `--executor slurm` (`resources={"nodes": N}`).

Such a job runs its node's stage once, on the allocation's first node (executors.slurm submits it with
one task per node and starts the job body as a one-task step there). A `run_external` torchrun launch
inside it is then spread over the whole allocation: `srun` starts one torchrun agent per node, in a
step that overlaps the job body's (`--overlap`: the body only waits for it), and the agents meet at a
c10d rendezvous on the first node (its address as Slurm knows it, NodeAddr) under the job id, which
also numbers the nodes. What the script writes (rank 0, by convention) is on the shared filesystem,
where the stage reads it back like on one node.

`ORCH_SLURM_NODES` (set by executors.slurmjob in the job body, never inherited by what it launches)
says that this process owns such an allocation: an `orch run` started by `srun` on several nodes
(MPI ranks) does not, and its launches stay on their own node.
Pure argument building apart from `scontrol` for the rendezvous host; no shell anywhere.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

#: Set in the body of an orch Slurm job that has more than one node: the allocation's node count.
NODES_VAR = "ORCH_SLURM_NODES"
#: The rendezvous port when the body does not run on the first node (it always does, as the batch
#: step's first step): this plus the job id modulo 1000.
BASE_PORT = 29500


@dataclass(frozen=True)
class Allocation:
    """The multi-node allocation this job body owns."""

    nodes: int
    job_id: str
    nodelist: str  # SLURM_JOB_NODELIST, compressed ("orchn[1-2]")


def allocation(environ: Mapping[str, str] = os.environ) -> Allocation | None:
    """The allocation of the orch Slurm job this process is the body of, when it has several nodes."""
    nodes = environ.get(NODES_VAR, "")
    if not nodes.isdigit() or int(nodes) < 2:
        return None
    return Allocation(int(nodes), environ.get("SLURM_JOB_ID", "orch"), environ.get("SLURM_JOB_NODELIST", ""))


def srun_prefix(nnodes: int) -> list[str]:
    """`srun` starting one task (a torchrun agent) on each of the allocation's nodes."""
    return ["srun", "--nodes", str(nnodes), "--ntasks", str(nnodes), "--ntasks-per-node", "1", "--overlap",
            "--kill-on-bad-exit=1"]


def rendezvous(alloc: Allocation) -> tuple[str, str]:
    """(host:port, run id) of the c10d rendezvous: the first node's address, a port free there (this
    process runs on that node) and the job id."""
    from .slurmctl import hostnames, node_address

    first = hostnames(alloc.nodelist)[0]
    host = node_address(first)
    if os.environ.get("SLURMD_NODENAME", first) == first:
        port = free_port()
    else:
        port = BASE_PORT + int(alloc.job_id) % 1000 if alloc.job_id.isdigit() else BASE_PORT
    return f"{host}:{port}", alloc.job_id


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
