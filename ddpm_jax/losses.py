"""Elementwise likelihood terms of the variational bound (DDPM §3.3, Improved DDPM §2).

All functions are elementwise in nats unless they say otherwise; `mean_flat` reduces to per-example
[B].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

Array = jax.Array

# Half-width of one of the 256 bins of 8-bit data scaled to [-1, 1].
BIN_HALF_WIDTH = 1.0 / 255.0
# Smallest bin probability; keeps the log finite when the model puts (numerically) no mass on a bin.
MIN_BIN_PROB = 1e-12


def bits_per_dim(nats: Array, x: Array) -> Array:
  """Per-example nats [B] of data x [B, ...] -> bits per dimension."""
  return nats / (math.prod(x.shape[1:]) * math.log(2.0))


def sum_flat(x: Array) -> Array:
  """Sum over every axis but the first: [B, ...] -> [B]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def expand_to(v: Array, x: Array) -> Array:
  """Per-example values [B] (or a scalar) -> [B, 1, …, 1], to broadcast against x [B, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def mean_flat(x: Array) -> Array:
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (
    -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
  )


def gaussian_log_likelihood(x: Array, means: Array, log_scales: Array) -> Array:
  """log N(x; means, e^(2·log_scales)) of continuous data x, elementwise, in nats."""
  z = (x - means) * jnp.exp(-log_scales)
  return -0.5 * (math.log(2.0 * math.pi) + z**2) - log_scales


def _log_normal_mass(lower: Array, upper: Array) -> Array:
  """log(Φ(upper) - Φ(lower)) for lower < upper, without cancellation in either tail."""
  # Right of zero both CDFs approach 1; use the mirrored lower tail Φ(-x) = 1 - Φ(x) there.
  mirror = lower > 0
  a = jnp.where(mirror, -upper, lower)
  b = jnp.where(mirror, -lower, upper)
  return jnp.log(jnp.maximum(ndtr(b) - ndtr(a), MIN_BIN_PROB))


def discretized_gaussian_log_likelihood(x: Array, means: Array, log_scales: Array) -> Array:
  """log P(x) of 8-bit data x ∈ {-1, -1 + 2/255, …, 1} under N(means, e^(2·log_scales)) integrated
  over x's bin [x - 1/255, x + 1/255], with the outermost bins extended to ±∞ (DDPM eq. 13).
  Elementwise, nats.

  The exact normal CDF is used (the reference code uses a tanh approximation of it).
  """
  inv_stdv = jnp.exp(-log_scales)
  upper = (x - means + BIN_HALF_WIDTH) * inv_stdv
  lower = (x - means - BIN_HALF_WIDTH) * inv_stdv
  log_cdf_upper = log_ndtr(upper)  # edge bin x = -1: (-∞, -1 + 1/255]
  log_one_minus_cdf_lower = log_ndtr(-lower)  # edge bin x = +1: [1 - 1/255, ∞)
  # The edges compare against ±0.999 as the reference code does: bin centres are 2/255 apart.
  return jnp.where(
    x < -0.999,
    log_cdf_upper,
    jnp.where(x > 0.999, log_one_minus_cdf_lower, _log_normal_mass(lower, upper)),
  )
