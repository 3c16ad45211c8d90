"""torch.distributed for stages that train with DDP inside the orchestrator process.

Launched as `torchrun --nproc_per_node 4 orch run experiment.py ...`, every rank runs orch; stages
marked `@stage(..., distributed=True)` run on every rank together, everything else on rank 0 (see
executors_torchrun). Inside such a stage:

    from orchestrator.distributed import init_process_group
    info = init_process_group()          # gloo on CPU, nccl on GPU, from the torchrun variables
    model = DDP(model.to(info.device), device_ids=[info.local_rank] if info.device.type == "cuda" else None)

The same stage also runs unchanged without torchrun (a plain or `--parallel` run): it then gets a
process group of one. Nothing here imports torch until a function is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .executors.launch import torchrun_env  # defined there: detecting the launch imports no DistInfo


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device this rank should use
    backend: str


def init_process_group(backend: str | None = None, **kwargs) -> DistInfo:
    """Initialize torch.distributed once per process from the torchrun variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); calling it again returns the same information. backend None
    means nccl when this rank has a GPU, gloo otherwise. Outside torchrun it makes a group of one,
    so DDP code needs no special case. Extra keyword arguments go to
    torch.distributed.init_process_group (e.g. timeout)."""
    import torch
    import torch.distributed as dist

    launched = torchrun_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if launched:
            rank, world_size = launched
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)
