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
#: Rendezvous ports are BASE_PORT + (job id modulo PORT_SPAN) and up: torchrun's default 29500, and
#: the whole span sits below Linux's default ephemeral range (32768-60999), so no outgoing connection
#: on the node can take the port between orch choosing it and torchrun binding it (a port 0 probe
#: would hand out an ephemeral one, which any connect may grab in that second).
BASE_PORT = 29500
PORT_SPAN = 1000


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
    """(host:port, run id) of the c10d rendezvous: the first node's address, a port there (free, when
    this process runs on that node and can check) and the job id."""
    from .slurmctl import hostnames, node_address

    first = hostnames(alloc.nodelist)[0]
    host = node_address(first)
    start = int(alloc.job_id) % PORT_SPAN if alloc.job_id.isdigit() else 0
    on_first = os.environ.get("SLURMD_NODENAME", first) == first
    return f"{host}:{free_port(start) if on_first else BASE_PORT + start}", alloc.job_id


def free_port(start: int) -> int:
    """The first port from BASE_PORT + start (wrapping within the span) that binds here: one the job id
    picks, so concurrent jobs on a node rarely probe the same one, and outside the ephemeral range."""
    for offset in range(PORT_SPAN):
        port = BASE_PORT + (start + offset) % PORT_SPAN
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    return BASE_PORT + start  # all taken: torchrun then says so itself
