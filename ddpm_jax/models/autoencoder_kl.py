"""The KL autoencoder of latent diffusion (Rombach et al. 2022; the SD-VAE, diffusers'
AutoencoderKL), NHWC: an encoder of residual blocks with stride-2 convolutions down to a middle
self-attention block, the diagonal-Gaussian posterior q(z | x) = N(mean, exp(logvar)), and a
mirrored decoder with nearest-neighbour upsampling.

  model = models.get_model(config.model)          # model.name = "autoencoder_kl"
  mean, logvar = model.apply(params, x, method="encode")   # x [B, H, W, C] in [-1, 1]
  x = model.apply(params, z, method="decode")              # z [B, H/f, W/f, latent_channels]
  z_mean, z_logvar = model.apply(params, x, method="encode_latents")  # the diffusion model's units
  x = model.apply(params, z, method="decode_latents")      # z = (raw - shift_factor)·scaling_factor
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ddpm_jax.models import layers

Array = Any
# diffusers' DiagonalGaussianDistribution clamps the log-variance to this range
LOGVAR_RANGE = (-30.0, 20.0)


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
  """f: the encoder halves the resolution between its levels, f = 2^(levels - 1)."""
  return 2 ** (len(block_out_channels) - 1)


class ResnetBlock(nn.Module):
  """GroupNorm → SiLU → 3×3 conv, twice, around a skip path (a 1×1 projection where the channels
  change): the time-free residual block of the LDM autoencoder."""

  out_channels: int
  num_groups: int
  norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda name: layers.GroupNorm(self.num_groups, self.norm_eps, name=name)
    conv = lambda name: layers.Conv(self.out_channels, dtype=self.dtype, name=name)
    h = conv("conv1")(nn.swish(norm("norm1")(x)).astype(self.dtype))
    h = conv("conv2")(nn.swish(norm("norm2")(h)).astype(self.dtype))
    if x.shape[-1] != self.out_channels:
      x = nn.Dense(self.out_channels, dtype=self.dtype, name="conv_shortcut")(x)
    return x + h


class SelfAttention(nn.Module):
  """One-head self-attention over the H·W positions with a residual connection."""

  num_groups: int
  norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, height, width, c = x.shape
    h = layers.GroupNorm(self.num_groups, self.norm_eps, name="group_norm")(x)
    h = h.astype(self.dtype).reshape(b, height * width, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=f"to_{n}")(h) for n in "qkv")
    h = nn.Dense(c, dtype=self.dtype, name="to_out")(layers.multihead_attention(q, k, v, 1))
    return x + h.reshape(x.shape)


class MidBlock(nn.Module):
  """Residual block, self-attention (unless `attention` is False), residual block."""

  num_groups: int
  norm_eps: float
  attention: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c, kw = x.shape[-1], dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dtype=self.dtype)
    x = ResnetBlock(c, **kw, name="resnets_0")(x)
    if self.attention:
      x = SelfAttention(**kw, name="attention")(x)
    return ResnetBlock(c, **kw, name="resnets_1")(x)


class Coder(nn.Module):
  """The hyperparameters the encoder and the decoder share."""

  block_out_channels: Sequence[int]
  num_res_blocks: int
  out_channels: int
  num_groups: int
  norm_eps: float
  mid_attention: bool
  dtype: Any = jnp.float32


class Encoder(Coder):
  """x [B, H, W, C] -> [B, H/f, W/f, out_channels], f = 2^(levels - 1)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dtype=self.dtype)
    h = layers.Conv(self.block_out_channels[0], dtype=self.dtype, name="conv_in")(x)
    last = len(self.block_out_channels) - 1
    for level, channels in enumerate(self.block_out_channels):
      for i in range(self.num_res_blocks):
        h = ResnetBlock(channels, **kw, name=f"down_{level}_{i}")(h)
      if level != last:  # TF's asymmetric (0 | 1) padding, diffusers' downsample_padding=0
        h = layers.Conv(channels, stride=2, padding="tf", dtype=self.dtype, name=f"down_{level}")(h)
    h = MidBlock(attention=self.mid_attention, **kw, name="mid")(h)
    h = nn.swish(layers.GroupNorm(self.num_groups, self.norm_eps, name="norm_out")(h))
    return layers.Conv(self.out_channels, dtype=self.dtype, name="conv_out")(h.astype(self.dtype))


class Decoder(Coder):
  """z [B, h, w, latent] -> [B, h·f, w·f, out_channels]."""

  @nn.compact
  def __call__(self, z: Array) -> Array:
    kw = dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dtype=self.dtype)
    h = layers.Conv(self.block_out_channels[-1], dtype=self.dtype, name="conv_in")(z)
    h = MidBlock(attention=self.mid_attention, **kw, name="mid")(h)
    for block, channels in enumerate(reversed(self.block_out_channels)):
      for i in range(self.num_res_blocks + 1):
        h = ResnetBlock(channels, **kw, name=f"up_{block}_{i}")(h)
      if block != len(self.block_out_channels) - 1:
        h = layers.Upsample(dtype=self.dtype, name=f"up_{block}")(h)
    h = nn.swish(layers.GroupNorm(self.num_groups, self.norm_eps, name="norm_out")(h))
    return layers.Conv(self.out_channels, dtype=self.dtype, name="conv_out")(h.astype(self.dtype))


class AutoencoderKL(nn.Module):
  """The LDM / SD KL autoencoder (diffusers' AutoencoderKL with DownEncoderBlock2D /
  UpDecoderBlock2D): downsampling factor f = 2^(len(block_out_channels) - 1), latents of
  `latent_channels`. `scaling_factor` and `shift_factor` map its raw latents to the diffusion
  model's (SD: 0.18215, 0; SDXL: 0.13025, 0): z = (raw - shift)·scale."""

  block_out_channels: Sequence[int] = (64, 128)
  num_res_blocks: int = 1  # diffusers' layers_per_block
  latent_channels: int = 4
  out_channels: int = 3
  num_groups: int = 32
  norm_eps: float = 1e-6
  mid_attention: bool = True
  quant_conv: bool = True  # 1×1 convolutions after the encoder and before the decoder
  post_quant_conv: bool = True
  scaling_factor: float = 1.0
  shift_factor: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    kw = dict(
      block_out_channels=tuple(self.block_out_channels),
      num_res_blocks=self.num_res_blocks,
      num_groups=self.num_groups,
      norm_eps=self.norm_eps,
      mid_attention=self.mid_attention,
      dtype=self.dtype,
    )
    self.encoder = Encoder(out_channels=2 * self.latent_channels, **kw)
    self.decoder = Decoder(out_channels=self.out_channels, **kw)
    width = 2 * self.latent_channels
    self.quant = nn.Dense(width, dtype=self.dtype) if self.quant_conv else None
    self.post_quant = (
      nn.Dense(self.latent_channels, dtype=self.dtype) if self.post_quant_conv else None
    )

  def encode(self, x: Array) -> tuple[Array, Array]:
    """x [B, H, W, C] -> the posterior's (mean, logvar), each [B, H/f, W/f, latent_channels]."""
    moments = self.encoder(x)
    if self.quant is not None:
      moments = self.quant(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: Array) -> Array:
    """Raw latents z [B, h, w, latent_channels] -> images [B, h·f, w·f, out_channels]."""
    if self.post_quant is not None:
      z = self.post_quant(z)
    return self.decoder(z).astype(jnp.float32)

  def encode_latents(self, x: Array) -> tuple[Array, Array]:
    """The posterior's (mean, logvar) in the diffusion model's units, (raw - shift)·scale."""
    return self.scale_posterior(*self.encode(x))

  def scale_posterior(self, mean: Array, logvar: Array) -> tuple[Array, Array]:
    """A posterior (mean, logvar) of `encode` in the diffusion model's units (also cached ones)."""
    scale = self.scaling_factor
    return (mean - self.shift_factor) * scale, logvar + 2.0 * jnp.log(scale)

  def decode_latents(self, z: Array) -> Array:
    """Images of latents in the diffusion model's units."""
    return self.decode(z / self.scaling_factor + self.shift_factor)

  def __call__(self, x: Array) -> Array:
    """The reconstruction of x from its posterior mean (initialises every parameter)."""
    return self.decode(self.encode(x)[0])
