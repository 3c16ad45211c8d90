"""Executors: *where* a node runs (see ARCHITECTURE.md).

- task: one node, wherever it runs (lock, re-check, call, save, entry);
- base: the Executor interface and the in-process executor;
- worker: the worker side shared by pool processes, MPI ranks and torchrun followers;
- pool, mpi, torchrun: the other executors; launch: how this process was started;
- slurm (with slurmjob, the job side, and slurmctl, scontrol/scancel): nodes as Slurm jobs;
- external: run_external, a command launched from inside a stage.

`open_executor` chooses one for a launch; `serve` is the life of a rank that is not the leader.
"""

from __future__ import annotations

from .base import Executor, InProcessExecutor
from .launch import Launch, WorkerConfig

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Sequence

__all__ = ["Executor", "InProcessExecutor", "Launch", "WorkerConfig", "open_executor", "serve"]


def open_executor(launch: Launch, config: WorkerConfig, parallel: int = 1, argv: Sequence[str] = (),
                  slurm: dict | None = None) -> Executor:
    """The executor of a run. Opened first thing, before anything that can fail, so that under MPI
    or torchrun the other ranks always hear from rank 0 (they get its exit code, never a hang).
    Nothing starts here for a local run: pool workers start on the first submit. `slurm` (the
    run's --slurm-* options, possibly empty) selects --executor slurm: nodes become Slurm jobs."""
    if slurm is not None:
        from .slurm import SlurmExecutor

        return SlurmExecutor(config, slurm)
    if launch.kind == "mpi":
        from .mpi import MPIExecutor

        return MPIExecutor(launch.comm, config)
    if launch.kind == "torchrun":
        from .torchrun import Channel, TorchrunLeader, channel_dir

        channel = Channel(channel_dir(config.store_root, config.experiment, list(argv)),
                          launch.rank, launch.size)
        channel.open()
        return TorchrunLeader(channel)
    if parallel > 1:
        from .pool import PoolExecutor

        return PoolExecutor(parallel, config)
    return InProcessExecutor()


def serve(launch: Launch, config: WorkerConfig, argv: Sequence[str] = ()) -> int:
    """Ranks other than 0: execute what rank 0 sends until it is done; returns the exit code."""
    if launch.kind == "mpi":  # the store and the experiment come from rank 0 (a WorkerConfig message)
        from .mpi import serve as serve_mpi

        return serve_mpi(launch.comm)
    from .torchrun import Channel, channel_dir, follow

    channel = Channel(channel_dir(config.store_root, config.experiment, list(argv)), launch.rank, launch.size)
    return follow(channel, config)
