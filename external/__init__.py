"""Code that runs outside the orchestrator's process: the torchrun training script and its model."""
