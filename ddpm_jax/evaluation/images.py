"""Image grids of samples, as uint8 arrays and PNG files."""

from __future__ import annotations

import io
import math

from etils import epath
import numpy as np
from PIL import Image

from ddpm_jax.pixels import to_uint8


def grid_uint8(
  images: np.ndarray, padding: int = 1, min_size: int = 32, columns: int | None = None
) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> one [rows·(H+p)+p, cols·(W+p)+p, 3] uint8 image of `columns`
  columns (None: as square as possible).

  Images smaller than `min_size` are enlarged by pixel repetition so that they can be seen.
  """
  images = to_uint8(images)
  factor = max(1, -(-min_size // images.shape[1]))
  images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, c = images.shape
  cols = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top : top + h, left : left + w] = image
  return grid


def save_png(image: np.ndarray, path: str) -> str:
  """Writes a PNG to a local or bucket path (etils.epath)."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  epath.Path(path).write_bytes(buffer.getvalue())
  return path
