"""Convolutions as matmuls for XLA:CPU (`model.conv_impl="winograd"`, and "auto" on CPU):
Winograd's F(m×m, 3×3) for the stride-1 3×3 convolutions and im2col for the rest, with the same
parameters and results as `lax.conv_general_dilated` up to rounding; faster than XLA:CPU's own
convolution (benchmarks/README.md has the figures). GPUs and TPUs use XLA's."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

# Winograd's minimal filtering F(m×m, 3×3), nested to 2-D (Lavin & Gray 2016): per m×m output tile,
# Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A with d the (m+2)×(m+2) input tile. As matrices (Bᵀ, G, Aᵀ), for m = 2
# and 4.
WINOGRAD_TRANSFORMS = {
  2: (
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32),
  ),
  4: (
    np.array(
      [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
      ],
      np.float32,
    ),
    np.array(
      [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
      ],
      np.float32,
    ),
    np.array(
      [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
      np.float32,
    ),
  ),
}


def _linear_combinations(matrix: np.ndarray, terms: Sequence[Array]) -> list[Array]:
  """[Σ_j matrix[i, j] · terms[j] for each row i], written term by term with the zeros skipped: XLA
  fuses these into elementwise loops, whereas as a dot with a contraction of 3 to 6 XLA:CPU runs
  them slowly."""
  rows = []
  for coefficients in matrix:
    row = None
    for coefficient, term in zip(coefficients.tolist(), terms):
      if coefficient:
        term = term if coefficient == 1 else -term if coefficient == -1 else term * coefficient
        row = term if row is None else row + term
    rows.append(row)
  return rows


def winograd_tile(height: int, width: int, dtype: Dtype) -> int | None:
  """Output tile m of `conv3x3_winograd` for an input size, or None where `conv_im2col` is used
  instead.

  m = 4 does 4× fewer multiplications than a direct 3×3 convolution, m = 2 2.25× fewer; larger tiles
  cost more transform work per tile and are less exact (the F(4×4) transforms' coefficients reach
  8). m = 4 from 16×16 up and m = 2 at 8×8 were the fastest per layer (forward + backward) on a
  2-core XLA:CPU; below 8×8 a direct convolution (`conv_im2col`) is. Low-precision dtypes get m = 2
  only."""
  if height % 2 or width % 2 or min(height, width) < 8:
    return None
  if (
    jnp.dtype(dtype) == jnp.float32
    and height % 4 == 0
    and width % 4 == 0
    and min(height, width) >= 16
  ):
    return 4
  return 2


def winograd_kernel_transform(kernel: Array, tile: int) -> Array:
  """G g Gᵀ of each input/output channel pair, indexed like the input tiles' transform: [3, 3, C, O]
  -> [(m+2)² (column-major), C, O].

  One matmul with G ⊗ G, [(m+2)², 9] @ [9, C·O]: a single pass over the kernel, and its gradient
  (G ⊗ G)ᵀ @ dU is one too. At batch 8 the kernels are as large as the activations, and the
  two-stage G (g Gᵀ) as elementwise passes (`_linear_combinations`) took ~10 % of a CIFAR-10
  training step on XLA:CPU, its gradient 5× longer than this matmul's."""
  g = WINOGRAD_TRANSFORMS[tile][1]
  size, (c, out) = tile + 2, kernel.shape[2:]
  # row (q, p): column q, row p of the tile
  g_kron_g = np.einsum("pi,qj->qpij", g, g).reshape(size * size, 9)
  return (jnp.asarray(g_kron_g, kernel.dtype) @ kernel.reshape(9, c * out)).reshape(
    size * size, c, out
  )


def conv3x3_winograd(x: Array, kernel: Array, tile: int) -> Array:
  """3×3 convolution, padding 1, by Winograd's F(m×m, 3×3), m = `tile`: [B, H, W, C] ⊛ [3, 3, C, O]
  -> [B, H, W, O].

  The same result as `lax.conv_general_dilated` up to float rounding, with the multiplications of
  all tiles gathered into (m+2)² matmuls [B·H·W/m², C] @ [C, O]; autodiff through it gives the input
  and kernel gradients as matmuls of the same size. H and W must be multiples of m."""
  b_t = WINOGRAD_TRANSFORMS[tile][0]
  size = tile + 2  # side of an input tile
  b, h, w, c = x.shape
  out = kernel.shape[-1]
  tiles_h, tiles_w = h // tile, w // tile
  if tiles_h * tile != h or tiles_w * tile != w:
    raise ValueError(
      f"Winograd F({tile}×{tile}, 3×3) needs H and W divisible by {tile}; got {h}×{w}."
    )
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Bᵀ d B: rows of the tiles first, then columns.  [size(row), B, tiles_h, W+2, C]
  rows = jnp.stack(
    _linear_combinations(b_t, [xp[:, r : r + tile * (tiles_h - 1) + 1 : tile] for r in range(size)])
  )
  v = jnp.stack(
    _linear_combinations(
      b_t, [rows[:, :, :, s : s + tile * (tiles_w - 1) + 1 : tile] for s in range(size)]
    )
  )
  u = winograd_kernel_transform(kernel, tile)
  m = jnp.einsum("tnc,tco->tno", v.reshape(size * size, -1, c), u)
  return winograd_output_transform(m, tile, (b, h, w, out))


def winograd_output_transform(m: Array, tile: int, shape: tuple[int, int, int, int]) -> Array:
  """Aᵀ M A of each tile: [(m+2)² (column-major), B·th·tw, O] -> the output image [B, H, W, O] =
  `shape`."""
  a_t = WINOGRAD_TRANSFORMS[tile][2]
  b, h, w, out = shape
  m = m.reshape(tile + 2, tile + 2, b, h // tile, w // tile, out)
  # Columns, then rows; y[q, b, p, i, j] is output pixel (i·m + p, j·m + q).
  # [size(row), tile(col), B, th, tw, O]
  y_cols = jnp.stack(_linear_combinations(a_t, _unstack(m))).swapaxes(0, 1)
  # [tile(col), B, tile(row), th, tw, O]
  y = jnp.stack(_linear_combinations(a_t, _unstack(y_cols)), axis=2)
  return y.transpose(1, 3, 2, 4, 0, 5).reshape(shape)


def _unstack(x: Array) -> list[Array]:
  """[x[0], x[1], …] by `jnp.split`, whose gradient is one concatenation; the gradient of indexing
  pads each slice back to full size and adds them, which made the output transform's gradient 3-4×
  slower on XLA:CPU."""
  return [part[0] for part in jnp.split(x, x.shape[0])]


def conv_im2col(x: Array, kernel: Array, stride: int) -> Array:
  """k×k convolution, padding (k-1)/2, as one matmul of the k² shifted (strided) views of the input
  side by side: [B, H, W, C] ⊛ [k, k, C, O] -> [B, H', W', O], [B·H'·W', k²·C] @ [k²·C, O].

  For the convolutions Winograd does not cover (below 8×8 and strided); on XLA:CPU its own
  convolution spends longer there transposing the kernels than multiplying."""
  k = kernel.shape[0]
  pad = (k - 1) // 2
  b, h, w, c = x.shape
  out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  patches = jnp.concatenate(
    [
      xp[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
      for i in range(k)
      for j in range(k)
    ],
    axis=-1,
  )  # [B, H', W', k²·C], (i, j, c)
  return (patches.reshape(-1, k * k * c) @ kernel.reshape(k * k * c, -1)).reshape(
    b, out_h, out_w, -1
  )
