"""Evaluation: image grids, (later) FID/IS with a JAX Inception and bits/dim."""
