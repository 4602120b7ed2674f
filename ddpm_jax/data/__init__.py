"""The data layer: sources (no JAX), transforms, the order, decoding workers, the batch loader,
and the dataset tool."""
