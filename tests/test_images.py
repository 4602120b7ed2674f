"""Sample grids: the uint8 conversion inverts the data scaling; the grid places every image."""

import numpy as np

from ddpm_jax import pixels as pixel_scaling
from ddpm_jax.evaluation import images


def test_to_uint8_inverts_the_data_scaling():
  pixels = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(
    pixel_scaling.to_uint8(pixels.astype(np.float32) / 127.5 - 1.0), pixels
  )
  np.testing.assert_array_equal(pixel_scaling.to_uint8(np.array([-3.0, 3.0])), [0, 255])


def test_grid_layout_and_enlargement():
  batch = np.stack([np.full((8, 8, 1), v) for v in np.linspace(-1, 1, 5)])
  grid = images.grid_uint8(batch, padding=1, min_size=16)  # 3×2 cells of 16×16 (8×8 repeated twice)
  assert grid.shape == (2 * 17 + 1, 3 * 17 + 1, 3)
  assert (
    grid[1, 1, 0] == 0
    and grid[16, 16, 0] == 0
    and grid[18, 1, 0] == pixel_scaling.to_uint8(np.array(0.5))
  )
  assert grid[18, 18, 0] == 255 and grid[17, 1, 0] == 0  # row 17 is padding
  assert np.all(grid[18:34, 35:51] == 0)  # the sixth cell stays empty
