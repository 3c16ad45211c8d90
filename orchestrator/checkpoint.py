"""Self-describing torch checkpoints (the public name of orchestrator.artifacts.checkpoint).

External training scripts import this: `from orchestrator.checkpoint import save_checkpoint`."""

from .artifacts.checkpoint import CheckpointError, capture_init_args, load_checkpoint, save_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint", "capture_init_args", "CheckpointError"]
