"""Train the Darcy-flow Fourier neural operator (external/models.py) with DistributedDataParallel.

The `train` stage launches this under torchrun through orch's run_external, and prints the exact
command; it runs the same way by hand, with or without torchrun:

    torchrun --standalone --nproc_per_node 2 external/train.py --train-data train.npz \\
        --model-out model.pt --metrics-out metrics.json --checkpoint-dir ckpt --epochs 20

- One process per device: NCCL on GPUs, gloo on CPUs. Device: cuda > mps > cpu (--device to force).
- The global batch is fixed and split across processes, and every process sees the same seeded
  permutation each epoch, so 1, 2 or 8 processes follow the same optimisation path (up to
  floating-point reduction order): the process count is a speed knob, not a hyperparameter.
- A checkpoint is written after every epoch (atomically, rank 0); a restarted job (torchrun
  --max-restarts, a preempted batch job, a rerun of the same command) resumes from the latest one,
  provided it was written with the same settings.
- Output: the final model (class + init args + weights, loadable by orch's CheckpointCacher or
  `orchestrator.checkpoint.load_checkpoint`) and a metrics JSON (loss per epoch, wall time). Under
  orch, the loss of every epoch also streams to the node's metrics (`orchestrator.metrics.log`; a
  no-op when run by hand).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

if __package__ in (None, ""):  # run as a script: make `external.models` importable from the project root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from external.models import FNO2d, relative_l2  # noqa: E402
from orchestrator import metrics  # noqa: E402
from orchestrator.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

CHECKPOINT_GLOB = "epoch-*.pt"


@click.command(context_settings={"show_default": True, "max_content_width": 100})
@click.option("--train-data", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".npz with arrays k (n, N, N) and u (n, N, N).")
@click.option("--model-out", required=True, type=click.Path(dir_okay=False), help="Final model checkpoint.")
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False), help="Metrics JSON.")
@click.option("--checkpoint-dir", required=True, type=click.Path(file_okay=False),
              help="Per-epoch checkpoints; resumed from if it holds some.")
@click.option("--epochs", default=20, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, type=click.IntRange(min=1), help="Global batch, split across processes.")
@click.option("--lr", default=2e-3, type=float, help="Peak learning rate (Adam, cosine decay).")
@click.option("--weight-decay", default=1e-4, type=float)
@click.option("--width", default=24, type=click.IntRange(min=1), help="Channels of the Fourier layers.")
@click.option("--modes", default=8, type=click.IntRange(min=1), help="Fourier modes kept per axis.")
@click.option("--layers", default=4, type=click.IntRange(min=1), help="Number of Fourier layers.")
@click.option("--seed", default=0, type=int)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--amp/--no-amp", default=False, help="Mixed precision (CUDA only; bf16 where supported).")
@click.option("--keep-checkpoints", default=2, type=click.IntRange(min=1), help="How many epoch checkpoints to keep.")
@click.option("--stop-after-epochs", default=None, type=click.IntRange(min=1),
              help="Stop after this many epochs of this invocation without writing the final model "
                   "(to split training across batch-job slots); rerun the same command to continue.")
def main(**opts):
    """Train an FNO mapping permeability k to pressure u."""
    t_start = time.perf_counter()
    rank, world, local_rank = _dist_env()
    dev = _pick_device(opts["device"], local_rank, world)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        _train(opts, rank, world, dev, t_start)
        if world > 1:
            # Leave together: a rank tearing gloo down while rank 0 still writes the final model can
            # abort the job at exit ("terminate called without an active exception").
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(opts: dict, rank: int, world: int, dev: torch.device, t_start: float) -> None:
    batch_size, epochs = opts["batch_size"], opts["epochs"]
    if batch_size % world:
        raise click.UsageError(f"--batch-size {batch_size} must be divisible by the number of processes ({world})")
    _seed_everything(opts["seed"])
    data = np.load(opts["train_data"])
    k = torch.from_numpy(data["k"]).float().to(dev)
    u = torch.from_numpy(data["u"]).float().to(dev)
    n = len(k)
    if n < batch_size:
        raise click.UsageError(f"--batch-size {batch_size} is larger than the training set ({n} samples)")
    model_args = dict(width=opts["width"], modes=opts["modes"], layers=opts["layers"],
                      k_mean=k.mean().item(), k_std=k.std().item(), u_mean=u.mean().item(), u_std=u.std().item())
    model = FNO2d(**model_args).to(dev)  # same seed on every rank; DDP broadcasts rank 0's weights anyway
    opt = torch.optim.Adam(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    use_amp = opts["amp"] and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if opts["amp"] and not use_amp and rank == 0:
        print(f"--amp ignored on {dev.type}: mixed precision is used on CUDA only", flush=True)

    # Everything that changes the result; a checkpoint written with other settings is never resumed.
    config = {key: opts[key] for key in ("epochs", "batch_size", "lr", "weight_decay", "width", "modes", "layers",
                                         "seed", "amp")}
    config["data_sha256"] = _sha256(opts["train_data"])
    ckpt_dir = Path(opts["checkpoint_dir"])
    history: list[dict] = []
    start_epoch, resumed_from = 0, None
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=opt, device=dev)
        if state["config"] != config:
            changed = sorted(key for key in set(config) | set(state["config"]) if config.get(key) != state["config"].get(key))
            raise click.ClickException(
                f"{latest} was written with other settings ({', '.join(changed)} differ); delete {ckpt_dir} "
                f"or pass another --checkpoint-dir to start over")
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"]
        resumed_from = start_epoch
        if rank == 0:
            print(f"resuming from {latest} (epoch {start_epoch}/{epochs})", flush=True)

    ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else model
    local_batch = batch_size // world
    steps = n // batch_size  # the last partial batch is dropped, identically for every process count
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"training FNO2d ({n_params:,} parameters) on {n} samples, {world} process(es) on {dev}, "
              f"global batch {batch_size}, {steps} steps/epoch", flush=True)
    ran = 0
    for epoch in range(start_epoch, epochs):
        if opts["stop_after_epochs"] is not None and ran >= opts["stop_after_epochs"]:
            if rank == 0:
                print(f"stopping after {ran} epoch(s) as asked; rerun the same command to continue", flush=True)
            return
        t0 = time.perf_counter()
        ddp.train()
        # The same permutation on every rank; rank r takes its slice of every global batch.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(opts["seed"] * 100_003 + epoch)).to(dev)
        total = torch.zeros(2, dtype=torch.float64, device=dev)  # (sum of per-sample losses, samples)
        for step in range(steps):
            idx = perm[step * batch_size + rank * local_batch: step * batch_size + (rank + 1) * local_batch]
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                losses = relative_l2(ddp(k[idx]).float(), u[idx])
            loss = losses.mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += torch.stack([losses.detach().double().sum(), torch.tensor(float(len(idx)), device=dev, dtype=torch.float64)])
        if world > 1:
            dist.all_reduce(total)
        lr_now = sched.get_last_lr()[0]
        sched.step()
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": total[0].item() / total[1].item(), "lr": lr_now,
                        "seconds": round(seconds, 4)})
        ran += 1
        if rank == 0:
            h = history[-1]
            print(f"epoch {epoch + 1:>3}/{epochs}  loss {h['loss']:.4f}  lr {lr_now:.2e}  {seconds:.2f}s", flush=True)
            metrics.log(step=epoch + 1, loss=h["loss"], lr=lr_now)  # orch's live display, report and compare
            path = ckpt_dir / f"epoch-{epoch + 1:04d}.pt"
            save_checkpoint(model, path, optimizer=opt, init_args=model_args, epoch=epoch + 1, config=config,
                            scheduler=sched.state_dict(), scaler=scaler.state_dict(), history=history)
            for old in sorted(ckpt_dir.glob(CHECKPOINT_GLOB))[:-opts["keep_checkpoints"]]:
                old.unlink(missing_ok=True)
        if world > 1:
            dist.barrier()  # nobody runs ahead of the checkpoint it would resume from

    if rank == 0:
        model.eval()
        save_checkpoint(model, opts["model_out"], init_args=model_args)
        train_time = sum(h["seconds"] for h in history)
        summary = {
            "epochs": history,
            "final_loss": history[-1]["loss"] if history else None,
            "train_time_s": round(train_time, 4),
            "wall_time_s": round(time.perf_counter() - t_start, 4),
            "samples_per_s": round(steps * batch_size * len(history) / train_time, 2) if train_time else None,
            "world_size": world,
            "device": dev.type,
            "amp": use_amp,
            "n_params": sum(p.numel() for p in model.parameters()),
            "resumed_from_epoch": resumed_from,
            "config": config,
        }
        _write_json(summary, opts["metrics_out"])
        print(f"wrote {opts['model_out']} and {opts['metrics_out']}", flush=True)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) when run directly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _pick_device(choice: str, local_rank: int, world: int) -> torch.device:
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if choice == "auto":
        choice = "cuda" if cuda else "mps" if mps and world == 1 else "cpu"
    if choice == "cuda":
        if not cuda:
            raise click.UsageError("--device cuda: no CUDA device is available here; use --device auto or cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local_world > torch.cuda.device_count():  # NCCL cannot run two ranks on one GPU
            raise click.UsageError(f"{local_world} processes on this node but {torch.cuda.device_count()} CUDA "
                                   f"device(s): launch one process per GPU (nproc) or train with --device cpu")
        return torch.device("cuda", local_rank)
    if choice == "mps":
        if not mps:
            raise click.UsageError("--device mps: MPS is not available here; use --device auto or cpu")
        if world > 1:
            raise click.UsageError("--device mps supports one process only (no distributed backend); use nproc 1")
        return torch.device("mps")
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.benchmark = False


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob(CHECKPOINT_GLOB)) if ckpt_dir.is_dir() else []
    return found[-1] if found else None


def _write_json(obj, path) -> None:
    """Atomic: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
