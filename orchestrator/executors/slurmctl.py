"""What the Slurm executor asks the cluster directly (scontrol, scancel), apart from what submitit
does (sbatch, sacct): the limits a submission must respect, asked once per run, and cancelling.

Always argument lists, never a shell. A missing or failing command is an OrchError that says what
to check, since it means the machine is not a Slurm login node (or the controller is down).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from ..errors import OrchError
from ..resources import time_minutes

#: A time limit for jobs where neither the stage, the parameter file, --slurm-time nor the
#: partition gives one (an unlimited partition): a year. submitit needs a number (it would default
#: to 5 minutes), and its timeout handling computes with it.
UNLIMITED_MINUTES = 365 * 24 * 60


class SlurmUnavailableError(OrchError):
    """--executor slurm on a machine where Slurm's commands are missing or the controller does not answer."""


def _run(argv: list[str], what: str) -> str:
    if shutil.which(argv[0]) is None:
        raise SlurmUnavailableError(f"--executor slurm: `{argv[0]}` not found; run orch on a Slurm login node "
                                    f"(or start a test cluster: tests/slurm/start-cluster.sh)")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        raise SlurmUnavailableError(f"--executor slurm: {what} did not answer within 60 s (`{' '.join(argv)}`); "
                                    f"is slurmctld overloaded or down? (`scontrol ping`)") from e
    if proc.returncode != 0:
        raise SlurmUnavailableError(f"--executor slurm: {what} failed (`{' '.join(argv)}` exited "
                                    f"{proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}); "
                                    f"is slurmctld up? (`scontrol ping`)")
    return proc.stdout


def _fields(line: str) -> dict[str, str]:
    """scontrol's one-line records: "Key=Value Key2=Value2" (values have no spaces here)."""
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


@dataclass
class Partition:
    name: str
    default: bool
    default_minutes: int | None  # DefaultTime, None when NONE
    max_minutes: int | None  # MaxTime, None when UNLIMITED
    total_nodes: int | None = None  # TotalNodes


@dataclass
class ClusterLimits:
    max_array_size: int  # an array may have at most this many tasks (indices 0..MaxArraySize-1)
    partitions: dict[str, Partition] = field(default_factory=dict)

    @property
    def default_partition(self) -> Partition | None:
        return next((p for p in self.partitions.values() if p.default), None)

    def partition(self, name: str | None) -> Partition | None:
        """The partition a job asking for `name` (None: none) runs in, if the cluster has it."""
        return self.partitions.get(name) if name else self.default_partition

    def default_minutes(self, partition: str | None) -> int:
        """The time limit of a job that asks for none: its partition's DefaultTime, else its MaxTime."""
        p = self.partition(partition)
        if p is None:
            return UNLIMITED_MINUTES
        return p.default_minutes or p.max_minutes or UNLIMITED_MINUTES


def _limit(text: str | None) -> int | None:
    if not text or text.upper() in ("NONE", "UNLIMITED", "INFINITE"):
        return None
    try:
        return time_minutes(text)
    except ValueError:
        return None


def cluster_limits() -> ClusterLimits:
    config = _run(["scontrol", "show", "config"], "reading the cluster's configuration")
    max_array = 1001
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            max_array = int(value.strip())
    limits = ClusterLimits(max_array_size=max_array)
    for line in _run(["scontrol", "show", "partition", "--oneliner"], "listing partitions").splitlines():
        f = _fields(line)
        if "PartitionName" in f:
            limits.partitions[f["PartitionName"]] = Partition(
                f["PartitionName"], f.get("Default") == "YES", _limit(f.get("DefaultTime")), _limit(f.get("MaxTime")),
                int(f["TotalNodes"]) if f.get("TotalNodes", "").isdigit() else None)
    return limits


def cancel(job_ids: list[str]) -> str:
    """scancel these jobs (array tasks as "120_3", whole arrays as "120"); returns scancel's complaints."""
    if not job_ids:
        return ""
    proc = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    return proc.stderr.strip() if proc.returncode != 0 else ""


def queued_jobs() -> dict[str, tuple[str, str]]:
    """Every job Slurm still holds (pending, running, completing): id ("120_3" for an array task,
    one line per task) -> (state, node list)."""
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%N"], "listing the queue")
    jobs = {}
    for line in out.splitlines():
        job, state, nodes = (line.split("|") + ["", ""])[:3]
        jobs[job.strip()] = (state.strip(), nodes.strip())
    return jobs


def ended_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """What sacct says of jobs that left the queue: id -> (state, node list); unknown ids are missing."""
    if not job_ids:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(job_ids)],
               "asking sacct for job states")
    jobs = {}
    for line in out.splitlines():
        job, state, nodes = (line.split("|") + ["", ""])[:3]
        jobs[job.strip()] = (state.split()[0] if state.strip() else "UNKNOWN", nodes.strip())
    return jobs


def hostnames(nodelist: str) -> list[str]:
    """A compressed node list ("orchn[1-2],gpu7") as names, in Slurm's order (`scontrol show hostnames`)."""
    names = _run(["scontrol", "show", "hostnames", nodelist], "expanding the job's node list").split()
    if not names:
        raise SlurmUnavailableError(f"`scontrol show hostnames {nodelist}` named no node")
    return names


def node_address(name: str) -> str:
    """The address Slurm reaches node `name` at (its NodeAddr, which is its name unless configured)."""
    return _fields(_run(["scontrol", "show", "node", name, "--oneliner"], f"looking up node {name}")).get(
        "NodeAddr", name)
