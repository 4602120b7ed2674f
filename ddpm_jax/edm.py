"""EDM (Karras et al. 2022): the denoiser D(x; σ) = c_skip x + c_out F(c_in x, c_noise) of a
network F, its noise-level distribution and loss weighting (EDM Table 1, "ours"). Pure functions of
arrays; σ [B] broadcasts over the image axes."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


# --------------------------------------------------------------------------------------------------
# Consistency models (Song et al. 2023, "CM"; Song & Dhariwal 2023, "iCT") in EDM's x_σ = x + σ n.
# A consistency function `f(x, σ) -> x̂` maps any point of a probability-flow ODE trajectory to its
# end at σ_min; a denoiser `D(x, σ)` is EDM's.
ConsistencyFn = Callable[[Array, Array], Array]


def consistency_scalings(sigma: Array, sigma_data: float, sigma_min: float) -> tuple[Array, Array]:
  """(c_skip, c_out) = (σ_d²/((σ - σ_min)² + σ_d²), σ_d (σ - σ_min)/√(σ² + σ_d²))  (CM appendix
  C): f(x, σ_min) = x, the boundary condition, for every network."""
  c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
  c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma**2 + sigma_data**2)
  return c_skip, c_out


def consistency_function(
  network_fn: NetworkFn, x: Array, sigma: Array, sigma_data: float, sigma_min: float
) -> Array:
  """f(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))  (CM eq. 5; c_in, c_noise EDM's)."""
  c_skip, c_out = (
    _per_example(c, x.ndim) for c in consistency_scalings(sigma, sigma_data, sigma_min)
  )
  _, _, c_in, c_noise = preconditioning(sigma, sigma_data)
  return (
    c_skip * x + c_out * network_fn(_per_example(c_in, x.ndim) * x, c_noise)[..., : x.shape[-1]]
  )


def consistency_from_denoiser(
  denoise_fn: Callable[[Array, Array], Array],
  x: Array,
  sigma: Array,
  sigma_data: float,
  sigma_min: float,
) -> Array:
  """f(x, σ) = c_skip x + (c_out/c_out^EDM)(D(x, σ) - c_skip^EDM x): CM eq. 5 with the network
  F = (D - c_skip^EDM x)/c_out^EDM that EDM's preconditioning implies for any denoiser D (a VP
  model's through `sampling.discrete_denoiser`), so that f(x, σ_min) = x."""
  c_skip, c_out = (
    _per_example(c, x.ndim) for c in consistency_scalings(sigma, sigma_data, sigma_min)
  )
  edm_skip, edm_out, _, _ = preconditioning(sigma, sigma_data)
  edm_skip, edm_out = _per_example(edm_skip, x.ndim), _per_example(edm_out, x.ndim)
  return c_skip * x + c_out / edm_out * (denoise_fn(x, sigma) - edm_skip * x)


def consistency_sigmas(
  index: Array, num_scales: Array, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> Array:
  """σ_i = (σ_min^{1/ρ} + i/(N - 1) (σ_max^{1/ρ} - σ_min^{1/ρ}))^ρ, i = 0 … N - 1 ascending  (CM
  §5, EDM's grid); index and N may be traced (iCT's N grows during training)."""
  fraction = index / (num_scales - 1)
  return (
    sigma_min ** (1 / rho) + fraction * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))
  ) ** rho


def ict_num_scales(step: Array, total_steps: int, s0: int = 10, s1: int = 1280) -> Array:
  """N(k) = min(s0 2^⌊k/K'⌋, s1) + 1, K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋  (iCT eq. 7: the number of
  discretisation steps doubles every K' of the K training steps)."""
  stage = max(total_steps // (int(np.log2(s1 // s0)) + 1), 1)  # (runs shorter than the stages)
  doublings = jnp.minimum(step // stage, 30)
  return jnp.minimum(s0 * 2**doublings, s1) + 1


def ict_index_probabilities(sigmas: Array, p_mean: float = -1.1, p_std: float = 2.0) -> Array:
  """p(i) ∝ erf((ln σ_{i+1} - P_mean)/(√2 P_std)) - erf((ln σ_i - P_mean)/(√2 P_std)), i = 0 … N - 2
  (iCT §3.5: ln σ ~ N(P_mean, P_std²) discretised onto the grid's intervals). -> [N - 1]."""
  cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (np.sqrt(2.0) * p_std))
  mass = cdf[1:] - cdf[:-1]
  return mass / jnp.sum(mass)


def pseudo_huber(x: Array, y: Array, c: float) -> Array:
  """d(x, y) = √(‖x - y‖² + c²) - c per example  (iCT §3.3; c = 0.00054 √dim there). -> [B]."""
  squared = jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim)))
  return squared / (jnp.sqrt(squared + c**2) + c)  # the same, without cancellation near x = y


def heun_ode_step(
  denoise_fn: Callable[[Array, Array], Array], x: Array, sigma: Array, sigma_next: Array
):
  """x at σ_next from x at σ along the probability-flow ODE dx/dσ = (x - D(x, σ))/σ, one Heun step
  (EDM Algorithm 1 without churn; σ, σ_next [B] > 0)."""
  per = lambda a: _per_example(a, x.ndim)
  d1 = (x - denoise_fn(x, sigma)) / per(sigma)
  x_euler = x + per(sigma_next - sigma) * d1
  d2 = (x_euler - denoise_fn(x_euler, sigma_next)) / per(sigma_next)
  return x + per(sigma_next - sigma) * (d1 + d2) / 2


def consistency_loss(
  student_fn: ConsistencyFn,
  target_fn: ConsistencyFn,
  x_next: Array,
  sigma_next: Array,
  x: Array,
  sigma: Array,
  distance: Callable[[Array, Array], Array],
) -> Array:
  """λ(σ_i) d(f_θ(x_{σ_{i+1}}, σ_{i+1}), sg f_θ⁻(x̂_{σ_i}, σ_i)), λ = 1/(σ_{i+1} - σ_i)  (CM eq. 7
  / 10 with iCT's weighting): x̂_{σ_i} is a teacher's ODE step from x_{σ_{i+1}} (distillation) or
  x + σ_i z beside x + σ_{i+1} z (training). -> [B]."""
  target = jax.lax.stop_gradient(target_fn(x, sigma))
  return distance(student_fn(x_next, sigma_next), target) / (sigma_next - sigma)


def consistency_sample(
  consistency_fn: ConsistencyFn, noise: Array, sigmas, sigma_min: float
) -> Array:
  """Multistep consistency sampling (CM Algorithm 1): x = f(σ_0 z_0, σ_0), then for each further
  σ_k of the decreasing `sigmas`, x = f(x + √(σ_k² - σ_min²) z_k, σ_k); noise [K, B, ...] (one
  z per σ). One step with a single σ."""
  sigmas = jnp.asarray(sigmas, jnp.float32)
  batch = noise.shape[1]
  level = lambda s: jnp.full((batch,), s)
  x = consistency_fn(sigmas[0] * noise[0], level(sigmas[0]))

  def step(x, inputs):
    sigma, z = inputs
    return consistency_fn(x + jnp.sqrt(sigma**2 - sigma_min**2) * z, level(sigma)), None

  return jax.lax.scan(step, x, (sigmas[1:], noise[1 : len(sigmas)]))[0]
