"""How this `orch run` process was started: alone, as one of several MPI ranks, or by torchrun.

Read from the launchers' environment variables, so a plain run pays nothing; mpi4py (which
initializes MPI) is imported only when an MPI launcher started the process.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Any

# World size as exported by Open MPI, MPICH / Intel MPI (hydra, PMI-1) and MVAPICH2.
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
# Set by launchers that do not export the size (PMIx, PMI-2, srun --mpi=...): MPI itself is asked.
_MPI_HINT_VARS = ("PMIX_RANK", "PMI_RANK", "PMI_FD", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_RANK")


class Launch:
    """(Launch and WorkerConfig are plain classes, not dataclasses: defining a dataclass costs 2-3 M
    instructions at import, on every run.)"""

    def __init__(self, kind: str = "local", rank: int = 0, size: int = 1, comm: Any = None):
        self.kind = kind  # "local" | "mpi" | "torchrun"
        self.rank = rank
        self.size = size
        self.comm = comm  # MPI.COMM_WORLD under MPI

    @property
    def leader(self) -> bool:
        """Rank 0 (or a plain run): plans, schedules, writes the manifest, prints."""
        return self.rank == 0


class WorkerConfig:
    """What a worker process needs before its first task (here, not in worker.py: a run in this
    process names it but needs none of the worker side). Pickled to MPI ranks and Slurm jobs."""

    __slots__ = ("store_root", "experiment")

    def __init__(self, store_root: str, experiment: str):
        self.store_root = store_root
        self.experiment = experiment  # path of the experiment file

    def __reduce__(self):
        return WorkerConfig, (self.store_root, self.experiment)

    def __setstate__(self, state) -> None:
        """A pickle of the dataclass this class was (its __dict__ as state), e.g. a Slurm job queued
        before orch was updated, still loads."""
        for name, value in (state[1] if isinstance(state, tuple) else state).items():
            setattr(self, name, value)


def mpi_size_from_env(env=os.environ) -> int | None:
    """The MPI world size the launcher exported; 0 when an MPI launcher started us without
    exporting it; None when no MPI launcher did."""
    for var in _MPI_SIZE_VARS:
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0 if any(var in env for var in _MPI_HINT_VARS) else None


def torchrun_env(env=os.environ) -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun (or a launcher exporting the
    same variables), else None."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    if "TORCHELASTIC_RUN_ID" not in env and ("LOCAL_RANK" not in env or "MASTER_ADDR" not in env):
        return None
    try:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        return None


def detect_launch(env=os.environ) -> Launch:
    """torchrun wins over MPI: when both sets of variables are present, torchrun started this
    process (from inside an MPI job) and its ranks are the ones that must cooperate."""
    tr = torchrun_env(env)
    if tr is not None:
        rank, size = tr
        return Launch("torchrun", rank, size) if size > 1 else Launch()
    size = mpi_size_from_env(env)
    if size is None or size == 1:
        return Launch()
    from .mpi import mpi_world

    comm = mpi_world()
    if comm is None:
        return Launch()
    return Launch("mpi", comm.Get_rank(), comm.Get_size(), comm)
