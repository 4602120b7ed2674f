"""The Diffusion Transformer (Peebles & Xie 2023, facebookresearch/DiT's models.py).

x [B, H, W, C] -> patches of p×p (a p-strided convolution) + fixed 2-D sin-cos positions -> N
adaLN-Zero blocks -> the final adaLN layer -> p·p·out_channels per token -> [B, H, W, out_channels].
The conditioning c = MLP(sinusoid(t)) + class embedding (row num_classes: the null class ∅ of
classifier-free guidance) sets each block's shift, scale and gate; the modulations and the final
layer start at zero, so the network starts as the identity on its residual stream and outputs 0.
Learned Σ: out_channels = 2C (ε, then the variance interpolation v as ADM's).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models import layers

Array = jax.Array

# Table 4 of the paper: (depth, hidden width, heads)
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
FREQUENCY_WIDTH = 256  # the sinusoid of t that the time MLP reads
# DiT's initialize_weights: Xavier-uniform linear layers, N(0, 0.02²) embeddings, zero modulations
XAVIER, SMALL_NORMAL, ZEROS = (
  nn.initializers.xavier_uniform(),
  nn.initializers.normal(0.02),
  nn.initializers.zeros,
)


def dit_shape(dit_size: str, depth=None, hidden_size=None, num_heads=None) -> tuple[int, int, int]:
  """(depth, hidden width, heads) of Table 4's `dit_size`, each overridden where given."""
  if dit_size not in DIT_SIZES:
    raise ValueError(f"Unknown dit_size {dit_size!r}; known: {', '.join(DIT_SIZES)}.")
  table_depth, table_width, table_heads = DIT_SIZES[dit_size]
  return depth or table_depth, hidden_size or table_width, num_heads or table_heads


def sincos_2d(width: int, grid: int) -> np.ndarray:
  """MAE's / DiT's fixed positions [grid², width] of a grid×grid token raster (row-major): the
  first half of the channels encodes the column, the second the row, each as
  [sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(-i / (width/4))."""
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width // 4))
  columns, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

  def embed(positions):
    angles = positions.reshape(-1)[:, None].astype(np.float64) * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed(columns), embed(rows)], axis=1).astype(np.float32)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN: x [B, T, D] · (1 + scale) + shift, per example."""
  return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """x + gate·Attention(adaLN(x)), then x + gate·MLP(adaLN(x)), the six modulations from c."""

  num_heads: int
  mlp_ratio: float = 4.0
  mlp_norm_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, c: Array) -> Array:
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(
      features, dtype=self.dtype, kernel_init=XAVIER, name=name
    )
    modulation = nn.Dense(6 * width, dtype=self.dtype, kernel_init=ZEROS, name="modulation")
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
      modulation(nn.silu(c)), 6, axis=-1
    )
    norm = lambda eps: nn.LayerNorm(eps, use_bias=False, use_scale=False, dtype=self.dtype)
    h = modulate(norm(1e-6)(x), shift_msa, scale_msa)
    q, k, v = jnp.split(dense(3 * width, "qkv")(h), 3, axis=-1)
    h = layers.multihead_attention(q, k, v, self.num_heads)
    x = x + gate_msa[:, None] * dense(width, "attn_out")(h)
    h = modulate(norm(self.mlp_norm_eps)(x), shift_mlp, scale_mlp)
    h = dense(int(width * self.mlp_ratio), "mlp_in")(h)
    h = dense(width, "mlp_out")(nn.gelu(h, approximate=True))
    return x + gate_mlp[:, None] * h


class DiT(nn.Module):
  """`DiT(dit_size="XL", patch_size=2, out_channels=8, num_classes=1000)` is DiT-XL/2 on 32×32×4
  latents with learned Σ; `depth`, `hidden_size`, `num_heads` override the size's.

  `__call__(x, t, y=None, context=None, train=False, embedding=None)` as the U-Net's: t is the
  network's noise-level input (a timestep, or 1000·t of flow matching); y None means ∅."""

  dit_size: str = "S"
  patch_size: int = 2
  out_channels: int = 4
  num_classes: int = 0
  null_class: bool = True  # the table's extra row ∅ (classifier-free guidance)
  depth: int | None = None
  hidden_size: int | None = None
  num_heads: int | None = None
  mlp_ratio: float = 4.0
  mlp_norm_eps: float = 1e-6  # the MLP's LayerNorm ε (diffusers' DiT: its config's norm_eps)
  embedding_type: str = "adm_positional"  # DiT's sinusoid of t; diffusers': "flipped_positional"
  dtype: layers.Dtype = jnp.float32
  remat: bool | str = False  # layers.rematerialised: False | True | "products"

  @nn.compact
  def __call__(self, x, t, y=None, context=None, train=False, embedding=None) -> Array:
    del train  # no dropout
    if context is not None or embedding is not None:
      raise ValueError("DiT is conditioned on t and class labels only (no context, no embedding).")
    depth, width, heads = dit_shape(self.dit_size, self.depth, self.hidden_size, self.num_heads)
    batch, height, _, _ = x.shape
    p, grid = self.patch_size, height // self.patch_size
    if height % p or x.shape[2] != height:
      raise ValueError(f"DiT takes square inputs divisible by patch_size={p}; got {x.shape}.")
    conv = nn.Conv(
      width, (p, p), (p, p), "VALID", dtype=self.dtype, kernel_init=XAVIER, name="patch_embed"
    )
    tokens = conv(x.astype(self.dtype)).reshape(batch, grid * grid, width) + sincos_2d(width, grid)
    c = layers.EMBEDDINGS[self.embedding_type](t, FREQUENCY_WIDTH)
    time_dense = lambda name: nn.Dense(width, dtype=self.dtype, kernel_init=SMALL_NORMAL, name=name)
    c = time_dense("time_embed_1")(nn.silu(time_dense("time_embed_0")(c)))
    if self.num_classes:
      if y is None:
        y = jnp.full((batch,), self.num_classes, jnp.int32)
      rows = self.num_classes + int(self.null_class)
      c = c + nn.Embed(
        rows, width, dtype=self.dtype, embedding_init=SMALL_NORMAL, name="class_embedding"
      )(y)
    block = layers.rematerialised(DiTBlock, self.remat)
    for i in range(depth):
      tokens = block(heads, self.mlp_ratio, self.mlp_norm_eps, self.dtype, name=f"block_{i}")(
        tokens, c
      )
    final = nn.Dense(2 * width, dtype=self.dtype, kernel_init=ZEROS, name="final_modulation")
    shift, scale = jnp.split(final(nn.silu(c)), 2, axis=-1)
    norm = nn.LayerNorm(1e-6, use_bias=False, use_scale=False, dtype=self.dtype)
    out = nn.Dense(p * p * self.out_channels, dtype=self.dtype, kernel_init=ZEROS, name="final")(
      modulate(norm(tokens), shift, scale)
    )
    # tokens (h, w) of (p, q, c) -> [B, h·p, w·q, c]
    out = out.reshape(batch, grid, grid, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch, height, height, self.out_channels).astype(jnp.float32)
