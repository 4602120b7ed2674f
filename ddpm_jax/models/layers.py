"""Building blocks of the DDPM and ADM U-Nets (Flax linen), each taking only its own
hyperparameters.

Compute runs in `dtype` (e.g. bfloat16) with float32 parameters; GroupNorm runs in float32 as ADM
does, for stability at low precision.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.cpu_conv import conv3x3_winograd, conv_im2col, winograd_tile

Array = jax.Array
Dtype = Any

NUM_GROUPS = 32


def timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """Sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, dim] (DDPM's
  `get_timestep_embedding`).

  emb[:, i] = sin(t · ω_i) and emb[:, half + i] = cos(t · ω_i), ω_i = max_period^(-i / (half - 1)),
  i < half = dim // 2; a zero column is appended when dim is odd.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def adm_timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """guided-diffusion's sinusoidal embedding: [B] -> [B, dim], emb[:, i] = cos(t · ω_i) and
  emb[:, half + i] = sin(t · ω_i), ω_i = max_period^(-i / half) (cos first, and ω over half, not
  half - 1, unlike DDPM's); a zero column is appended when dim is odd."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.pad(jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1), ((0, 0), (0, dim % 2)))


def flipped_timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """DDPM's frequencies ω_i = max_period^(-i / (half - 1)) with cos first: diffusers'
  Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1), the embedder of its DiT (the original
  DiT's is guided-diffusion's, `adm_timestep_embedding`)."""
  half = dim // 2
  emb = timestep_embedding(t, 2 * half, max_period)
  return jnp.pad(jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1), ((0, 0), (0, dim % 2)))


def fourier_embedding(x: Array, dim: int, scale: float = 16.0) -> Array:
  """Gaussian Fourier features of a noise level (NCSN++, Song et al. 2021; Tancik et al. 2020): [B]
  -> [B, dim].

  emb = [sin(2π x w), cos(2π x w)] with dim // 2 frequencies w ~ N(0, scale²), drawn once from a
  fixed key: constants, not parameters (score_sde stops their gradient); a zero column is appended
  when dim is odd."""
  freqs = scale * jax.random.normal(jax.random.key(0), (dim // 2,), jnp.float32)
  args = 2.0 * math.pi * jnp.asarray(x, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def base2_fourier_features(x: Array, exponents: Sequence[int]) -> Array:
  """VDM's input features [sin(2^n·2π x), cos(2^n·2π x)] for each channel and n: [..., C] -> [...,
  2·C·len(n)].
  High frequencies make the fine detail of nearly clean inputs (the last bits of each pixel) easy to
  read."""
  freqs = 2.0 * math.pi * 2.0 ** jnp.asarray(exponents, jnp.float32)
  args = (x[..., None] * freqs).reshape(x.shape[:-1] + (-1,))
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


# How a U-Net embeds its noise-level input t (a timestep, t·(N-1), or log σ).
EMBEDDINGS = {
  "positional": timestep_embedding,
  "adm_positional": adm_timestep_embedding,  # guided-diffusion's (its released checkpoints)
  "flipped_positional": flipped_timestep_embedding,  # diffusers' DiT
  "fourier": fourier_embedding,
}


def group_norm_statistics(x: Array, num_groups: int, epsilon: float) -> tuple[Array, Array]:
  """Mean and 1/√(var + ε) of each group of channels over all non-batch axes (Wu & He 2018),
  broadcast back to the channels: x [B, ..., C] -> two [B, 1, ..., 1, C].

  Per-channel means over the spatial axes first, then over each group's channels: the same numbers
  as flax's nn.GroupNorm (var = E[x²] - E[x]², clipped at 0), but XLA:CPU reduces over the spatial
  axes with the channels contiguous 2-10× faster than over flax's [..., groups, C / groups] view,
  whose innermost axis is only 4 to 16 long."""
  b, c = x.shape[0], x.shape[-1]
  if c % num_groups:
    raise ValueError(f"GroupNorm: {c} channels are not divisible into {num_groups} groups.")
  spatial = tuple(range(1, x.ndim - 1))
  group_mean = lambda m: m.reshape(b, num_groups, c // num_groups).mean(-1)  # [B, C] -> [B, G]
  mean = group_mean(jnp.mean(x, spatial))
  var = jnp.maximum(group_mean(jnp.mean(x * x, spatial)) - mean * mean, 0.0)
  to_channels = lambda g: jnp.repeat(g, c // num_groups, axis=-1).reshape(
    (b,) + (1,) * len(spatial) + (c,)
  )
  return to_channels(mean), to_channels(jax.lax.rsqrt(var + epsilon))


class GroupNorm(nn.Module):
  """GroupNorm in float32 with a learned per-channel scale and bias: nn.GroupNorm's parameters and
  results, computed by `group_norm_statistics`."""

  num_groups: int = NUM_GROUPS
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    mean, inv_std = group_norm_statistics(x, self.num_groups, self.epsilon)
    return (x - mean) * (inv_std * scale) + bias


def keeps_products(primitive, *args, **params) -> bool:
  """A remat policy: a block's matmul and convolution outputs are kept for the backward pass, and
  only its elementwise work (norms, activations, softmax) is computed again."""
  del args, params
  return primitive in (jax.lax.dot_general_p, jax.lax.conv_general_dilated_p)


def rematerialised(block: type[nn.Module], remat: bool | str, **remat_options) -> type[nn.Module]:
  """`block` computed again in the backward pass instead of keeping its activations (`nn.remat`,
  the same parameters): remat False: not; True: all of it; "products": all but its matmul and
  convolution outputs (`keeps_products`)."""
  if remat is False:
    return block
  if remat not in (True, "products"):
    raise ValueError(f"remat must be False, True or 'products'; got {remat!r}.")
  policy = keeps_products if remat == "products" else None
  return nn.remat(block, policy=policy, **remat_options)


CONV_IMPLS = ("auto", "xla", "winograd")
CONV_PADDINGS = ("symmetric", "tf")


class Conv(nn.Module):
  """k×k convolution, padding (k-1)/2 on each side as the PyTorch code of DDPM/ADM (so weights port
  1:1).

  impl: "xla" (lax.conv) or "winograd": matmuls, `conv3x3_winograd` for the stride-1 3×3
  convolutions at the sizes `winograd_tile` picks and `conv_im2col` for the rest; both have the same
  parameters and results. "auto": on CPU Winograd F(4×4, 3×3) where it fits (stride 1, 16×16 and
  up, float32) and XLA's convolution elsewhere; on GPU/TPU XLA's (cuDNN and the TPU compiler choose
  their own algorithms).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  zero_init: bool = False
  impl: str = "xla"
  dtype: Dtype = jnp.float32
  # "tf": (0, k - 1 - …) zero padding after each axis only, as TensorFlow's "SAME" for stride 2
  # (diffusers' downsample_padding=0, the DDPM checkpoints'); XLA's convolution computes it
  padding: str = "symmetric"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"Unknown conv impl {self.impl!r}; valid: {', '.join(CONV_IMPLS)}.")
    if self.padding not in CONV_PADDINGS:
      raise ValueError(f"Unknown conv padding {self.padding!r}; valid: {', '.join(CONV_PADDINGS)}.")
    k, c = self.kernel_size, x.shape[-1]
    kernel_init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
    kernel = self.param("kernel", kernel_init, (k, k, c, self.features), jnp.float32).astype(
      self.dtype
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
      self.dtype
    )
    x = x.astype(self.dtype)
    impl = self.impl if self.padding == "symmetric" else "xla"
    if impl == "auto":
      fits = k == 3 and self.stride == 1 and winograd_tile(x.shape[1], x.shape[2], self.dtype) == 4
      impl = "winograd" if fits and jax.default_backend() == "cpu" else "xla"
    tile = winograd_tile(x.shape[1], x.shape[2], self.dtype) if impl == "winograd" else None
    if tile and k == 3 and self.stride == 1:
      y = conv3x3_winograd(x, kernel, tile)
    elif impl == "winograd":
      y = conv_im2col(x, kernel, self.stride)
    else:
      pad = (k - 1) // 2
      pads = ((pad, pad),) * 2 if self.padding == "symmetric" else ((0, k - self.stride),) * 2
      y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (self.stride, self.stride),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    return y + bias


def upsample_nearest(x: Array) -> Array:
  """2× nearest-neighbour upsampling as a broadcast, whose gradient is a plain sum (not a
  scatter)."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def downsample_avg(x: Array) -> Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upfirdn_1d(
  x: Array, taps: np.ndarray, axis: int, up: int, down: int, pad: tuple[int, int]
) -> Array:
  """StyleGAN2's upfirdn along one axis: up - 1 zeros after each sample, `pad` zeros before and
  after, a (true) convolution with `taps`, every `down`-th sample kept."""
  if up > 1:
    x = jnp.stack([x] + [jnp.zeros_like(x)] * (up - 1), axis=axis + 1)
    x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])
  widths = [(0, 0)] * x.ndim
  widths[axis] = pad
  x = jnp.pad(x, widths)
  size = (x.shape[axis] - len(taps)) // down + 1
  return sum(
    float(tap) * jax.lax.slice_in_dim(x, j, j + (size - 1) * down + 1, down, axis)
    for j, tap in enumerate(taps[::-1])
  )


def fir_upsample(x: Array, kernel: Sequence[int]) -> Array:
  """2× upsampling with the separable FIR filter `kernel` ⊗ `kernel`, zero outside the image
  (StyleGAN2's `upsample_2d`, NCSN++'s resampling with (1, 3, 3, 1)): [B, H, W, C] -> [B, 2H, 2W,
  C]. The taps sum to 2 per axis, so that a constant image stays constant away from the border."""
  taps = 2.0 * np.asarray(kernel, np.float64) / np.sum(kernel)
  p = len(taps) - 2
  for axis in (1, 2):
    x = _upfirdn_1d(x, taps, axis, up=2, down=1, pad=((p + 1) // 2 + 1, p // 2))
  return x


def fir_downsample(x: Array, kernel: Sequence[int]) -> Array:
  """2× downsampling with the separable FIR filter `kernel` ⊗ `kernel` (taps summing to 1), zero
  outside the image (StyleGAN2's `downsample_2d`): [B, H, W, C] -> [B, H/2, W/2, C]."""
  taps = np.asarray(kernel, np.float64) / np.sum(kernel)
  p = len(taps) - 2
  for axis in (1, 2):
    x = _upfirdn_1d(x, taps, axis, up=1, down=2, pad=((p + 1) // 2, p // 2))
  return x


def resample(x: Array, direction: str, fir_kernel: Sequence[int] = ()) -> Array:
  """2× "up" or "down": nearest neighbour / 2×2 mean, or the FIR filter `fir_kernel` when one is
  given."""
  if direction == "up":
    return fir_upsample(x, fir_kernel) if fir_kernel else upsample_nearest(x)
  return fir_downsample(x, fir_kernel) if fir_kernel else downsample_avg(x)


FIR_WITH_CONV_ERROR = (
  "FIR resampling with a convolution (StyleGAN2's fused up/down-sampling convolution) is not "
  "implemented: with fir_kernel, use resblock_updown=True (DDPM++/NCSN++) or conv_resample=False."
)


class Downsample(nn.Module):
  """Halves the resolution: 3×3 stride-2 convolution, or without one 2×2 average pooling (or the FIR
  filter `fir_kernel`)."""

  with_conv: bool = True
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  fir_kernel: Sequence[int] = ()
  padding: str = "symmetric"  # of the convolution: "symmetric" (1 | 1) or "tf" (0 | 1)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv and self.fir_kernel:
      raise ValueError(FIR_WITH_CONV_ERROR)
    if self.with_conv:
      conv = Conv(
        x.shape[-1], stride=2, impl=self.conv_impl, dtype=self.dtype, padding=self.padding
      )
      return conv(x)
    return resample(x, "down", self.fir_kernel)


class Upsample(nn.Module):
  """Doubles the resolution: nearest neighbour (or the FIR filter `fir_kernel`), then a 3×3
  convolution if `with_conv`."""

  with_conv: bool = True
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  fir_kernel: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv and self.fir_kernel:
      raise ValueError(FIR_WITH_CONV_ERROR)
    x = resample(x, "up", self.fir_kernel)
    return Conv(x.shape[-1], impl=self.conv_impl, dtype=self.dtype)(x) if self.with_conv else x


def residual_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
  """x + h, or (x + h)/√2 with `skip_rescale` (DDPM++/NCSN++), which keeps the variance of a sum of
  two independent unit-variance terms at 1."""
  return (x + h) * (1 / math.sqrt(2)) if skip_rescale else x + h


class ResBlock(nn.Module):
  """Wide residual block conditioned on an embedding (DDPM's `resnet_block`, ADM's `ResBlock`).

  scale_shift_norm: AdaGN, GroupNorm(h)·(1 + s) + b with (s, b) from the embedding (ADM §3), instead
  of adding the projected embedding before the second norm (DDPM).
  resample: "up" | "down" resamples inside the block as in BigGAN (ADM's resblock_updown), by
  nearest neighbour / mean or by the FIR filter `fir_kernel` (NCSN++).
  project_resampled_skip: a 1×1 projection of the skip path in resampling blocks also when the
  channels stay (score_sde's BigGAN blocks; ADM keeps the identity there).
  skip_rescale: returns (x + h)/√2 (DDPM++/NCSN++), keeping the sum's variance that of its terms.
  """

  out_channels: int
  dropout: float = 0.0
  scale_shift_norm: bool = False
  resample: str | None = None
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  fir_kernel: Sequence[int] = ()
  project_resampled_skip: bool = False
  skip_rescale: bool = False
  norm_eps: float = 1e-5  # GroupNorm's ε (diffusers' DDPM checkpoints: 1e-6)

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    h = nn.swish(GroupNorm(epsilon=self.norm_eps)(x)).astype(self.dtype)
    if self.resample is not None:
      h, x = (
        resample(h, self.resample, self.fir_kernel),
        resample(x, self.resample, self.fir_kernel),
      )
    h = Conv(self.out_channels, impl=self.conv_impl, dtype=self.dtype)(h)
    emb_out = nn.Dense(self.out_channels * (2 if self.scale_shift_norm else 1), dtype=self.dtype)(
      nn.swish(emb)
    )
    emb_out = emb_out[:, None, None, :]
    if self.scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = GroupNorm(epsilon=self.norm_eps)(h) * (1 + scale) + shift
    else:
      h = GroupNorm(epsilon=self.norm_eps)(h + emb_out)
    h = nn.Dropout(self.dropout)(nn.swish(h).astype(self.dtype), deterministic=not train)
    h = Conv(self.out_channels, zero_init=True, impl=self.conv_impl, dtype=self.dtype)(h)
    if x.shape[-1] != self.out_channels or (self.resample and self.project_resampled_skip):
      # 1×1 projection (DDPM's NIN shortcut)
      x = nn.Dense(self.out_channels, dtype=self.dtype, name="skip")(x)
    return residual_sum(x, h, self.skip_rescale)


def num_attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
  if num_head_channels > 0:
    if channels % num_head_channels:
      raise ValueError(
        f"{channels} channels are not divisible by num_head_channels={num_head_channels}."
      )
    return channels // num_head_channels
  if channels % num_heads:
    raise ValueError(f"{channels} channels are not divisible by num_heads={num_heads}.")
  return num_heads


def attention_implementation(dtype, head_dim: int) -> str | None:
  """cuDNN's fused (flash) attention on a GPU where it takes the inputs (16-bit, head width a
  multiple of 8 up to 128); else None: XLA's."""
  fits = dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
  return "cudnn" if fits and jax.default_backend() == "gpu" else None


def multihead_attention(q: Array, k: Array, v: Array, heads: int) -> Array:
  """Multi-head softmax(q kᵀ/√d) v: q [B, L, C], k and v [B, S, C] -> [B, L, C]."""
  b, length, c = q.shape
  split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, c // heads)
  q, k, v = split(q), split(k), split(v)
  if attention_implementation(q.dtype, c // heads) == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn").reshape(b, length, c)
    except (NotImplementedError, RuntimeError, ValueError):  # (this cuDNN or GPU: not supported)
      pass  # XLA's, below
  return jax.nn.dot_product_attention(q, k, v).reshape(b, length, c)


class AttentionBlock(nn.Module):
  """Self-attention over the H·W positions with a residual connection (DDPM's `attn_block`, ADM's
  multi-head `AttentionBlock`); with `context_dim`, a cross-attention to a context sequence follows.
  skip_rescale: each residual sum is divided by √2 (DDPM++/NCSN++)."""

  num_heads: int = 1
  num_head_channels: int = -1
  context_dim: int | None = None
  dtype: Dtype = jnp.float32
  skip_rescale: bool = False
  norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> Array:
    b, hgt, wid, c = x.shape
    heads = num_attention_heads(c, self.num_heads, self.num_head_channels)
    h = GroupNorm(epsilon=self.norm_eps)(x).astype(self.dtype).reshape(b, hgt * wid, c)
    q, k, v = jnp.split(nn.Dense(3 * c, dtype=self.dtype, name="qkv")(h), 3, axis=-1)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(
      multihead_attention(q, k, v, heads)
    )
    x = residual_sum(x, h.reshape(x.shape), self.skip_rescale)
    if self.context_dim is None:
      return x
    if context is None or context.shape[-1] != self.context_dim:
      got = None if context is None else context.shape
      raise ValueError(
        f"This model cross-attends to a context [B, L, {self.context_dim}]; got {got}."
      )
    h = GroupNorm(epsilon=self.norm_eps, name="cross_norm")(x).astype(self.dtype)
    h = h.reshape(b, hgt * wid, c)
    q = nn.Dense(c, dtype=self.dtype, name="cross_q")(h)
    k, v = jnp.split(
      nn.Dense(2 * c, dtype=self.dtype, name="cross_kv")(context.astype(self.dtype)), 2, axis=-1
    )
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="cross_out")(
      multihead_attention(q, k, v, heads)
    )
    return residual_sum(x, h.reshape(x.shape), self.skip_rescale)
