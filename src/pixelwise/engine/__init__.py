"""Training loop, evaluation, checkpoints and runtime (device, precision) selection."""
