"""EDM (Karras et al. 2022): the denoiser D(x; σ) = c_skip x + c_out F(c_in x, c_noise) of a
network F, its noise-level distribution and loss weighting (EDM Table 1, "ours"). Pure functions of
arrays; σ [B] broadcasts over the image axes."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# (c_in x [B, H, W, C], c_noise [B]) -> F [B, H, W, C]
NetworkFn = Callable[[Array, Array], Array]


def _per_example(sigma: Array, ndim: int) -> Array:
  return sigma.reshape((-1,) + (1,) * (ndim - 1))


def preconditioning(sigma: Array, sigma_data: float) -> tuple[Array, Array, Array, Array]:
  """(c_skip, c_out, c_in, c_noise) = (σ_d²/(σ² + σ_d²), σ σ_d/√(σ² + σ_d²), 1/√(σ² + σ_d²),
  ¼ ln σ)  (EDM Table 1): unit-variance network inputs and targets for data of std σ_d."""
  total = sigma**2 + sigma_data**2
  return (
    sigma_data**2 / total,
    sigma * sigma_data / jnp.sqrt(total),
    1 / jnp.sqrt(total),
    (jnp.log(sigma) / 4),
  )


def denoise(network_fn: NetworkFn, x: Array, sigma: Array, sigma_data: float) -> Array:
  """D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))  (EDM eq. 7); x [B, ...], σ [B]."""
  c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
  c_skip, c_out, c_in = (_per_example(c, x.ndim) for c in (c_skip, c_out, c_in))
  return c_skip * x + c_out * network_fn(c_in * x, c_noise)[..., : x.shape[-1]]


def loss_weight(sigma: Array, sigma_data: float) -> Array:
  """λ(σ) = (σ² + σ_d²)/(σ σ_d)²  (EDM Table 1): 1/c_out², so that every σ weighs the network's
  own error equally."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(key: Array, batch_size: int, p_mean: float, p_std: float) -> Array:
  """ln σ ~ N(P_mean, P_std²)  (EDM Table 1): [B]."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, (batch_size,)))


def loss(network_fn: NetworkFn, y: Array, sigma: Array, noise: Array, sigma_data: float) -> Array:
  """λ(σ) ‖D(y + σ n; σ) - y‖² per example, the mean over its pixels (EDM eq. 8): [B]."""
  denoised = denoise(network_fn, y + _per_example(sigma, y.ndim) * noise, sigma, sigma_data)
  per_pixel = (denoised - y) ** 2
  return loss_weight(sigma, sigma_data) * jnp.mean(per_pixel, axis=tuple(range(1, y.ndim)))
