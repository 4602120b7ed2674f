"""Super-resolution diffusion (ADM-U, Dhariwal & Nichol 2021, §D / guided-diffusion's
SuperResModel): the U-Net sees x_t beside the low-resolution image upsampled to its size, and is
trained on the data's own downsampled images.

Pure functions of NHWC arrays; the resampling is guided-diffusion's, so that its upsamplers'
weights give its outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def downsample(x: Array, size: int) -> Array:
  """[B, H, W, C] -> [B, size, size, C]: the mean over each (H/size)² block, which is
  F.interpolate(mode="area") for an integer factor (guided-diffusion's low-res training inputs)."""
  b, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f"An {h}×{w} image does not downsample to {size}×{size} by an integer factor.")
  return x.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))


def upsample(low_res: Array, size: int) -> Array:
  """[B, h, w, C] -> [B, size, size, C] bilinearly with half-pixel centres and clamped edges:
  F.interpolate(mode="bilinear", align_corners=False), SuperResModel's upsampling."""
  b, _, _, c = low_res.shape
  return jax.image.resize(low_res, (b, size, size, c), "bilinear", antialias=False)


def model_input(x_t: Array, low_res: Array) -> Array:
  """SuperResModel's input: [x_t, upsample(low_res)] along channels, [B, H, W, 2C]."""
  return jnp.concatenate([x_t, upsample(low_res, x_t.shape[1]).astype(x_t.dtype)], axis=-1)
