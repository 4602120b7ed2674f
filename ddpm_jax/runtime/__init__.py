"""Utilities every layer may use (they import nothing else of ddpm_jax): the device mesh,
checkpoints, the optimizer, metric logs, the host allocator, workdir files and error types."""
