"""Training engine: optimisation, checkpoints, the training loop and distributed helpers."""
