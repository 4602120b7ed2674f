"""The data scaling between 8-bit pixels and the models' range: x/127.5 - 1, one place for every
caller."""

from __future__ import annotations

import numpy as np


def from_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 in {0, …, 255} -> float32 in [-1, 1], the data scaling x/127.5 - 1."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


# from_uint8 of each value, for an accelerator to look up: bitwise the host's scaling (XLA's
# x/127.5 - 1 rounds differently in the last bit)
FROM_UINT8_TABLE = from_uint8(np.arange(256, dtype=np.uint8))


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 in {0, …, 255}, the inverse of the data scaling x/127.5 - 1."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
