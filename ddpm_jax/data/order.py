"""The order of the examples: a pure function of (seed, step).

The example stream is a concatenation of per-epoch permutations, global batch s takes stream
positions [s·B, (s+1)·B), and process p reads rows [p·B/P, (p+1)·B/P) of it. Restarting at step s
therefore continues exactly where an uninterrupted run would be, with no iterator state to
checkpoint. Random flips are keyed by the stream position too.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch`: a permutation of [0, N), computed once per epoch (at ImageNet's
  1.28 M examples one costs tens of milliseconds), read-only."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def stream_indices(num_examples: int, seed: int, positions: np.ndarray) -> np.ndarray:
  """Example index at each stream position: epoch e = position // N uses its own permutation of [0,
  N)."""
  epochs = positions // num_examples
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    perm = epoch_permutation(num_examples, seed, int(epoch))
    mask = epochs == epoch
    out[mask] = perm[positions[mask] % num_examples]
  return out


def local_positions(
  step: int, global_batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Stream positions of this process's rows of global batch `step`."""
  local = global_batch_size // process_count
  start = step * global_batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)
