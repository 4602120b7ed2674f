"""Variational Diffusion Models (Kingma et al. 2021): the continuous-time VLB in terms of the SNR.

The noise schedule is γ(t) = -log SNR(t), increasing on t ∈ [0, 1]; α_t² = sigmoid(-γ_t), σ_t² =
sigmoid(γ_t) and z_t = α_t x + σ_t ε (variance preserving). Every schedule here has the form

  γ(t) = γ_0 + (γ_1 - γ_0) · ũ(t),   ũ(0) = 0, ũ(1) = 1, ũ increasing,

with ũ(t) = t (the fixed linear schedule) or the normalised monotone network of the paper (App. H).
The VLB of
8-bit data x is  -log p(x) ≤ L_prior + L_recon + L_diffusion  (eq. 11), each [B] in nats:

  L_prior     = KL(q(z_1 | x) ‖ N(0, I))
  L_recon     = E_q(z_0|x) [-log p(x | z_0)],
                p(x | z_0) ∝ exp(-½ SNR_0 ‖z_0/α_0 - x‖²) over the 256 pixel values
  L_diffusion = ½ E_{t ~ U(0,1)} [γ'(t) ‖ε - ε̂(z_t; t)‖²]          (eq. 17, T → ∞)
             or T/2 E_{i ~ U{1..T}} [expm1(γ_t - γ_s) ‖ε - ε̂‖²], t = i/T, s = (i-1)/T
                                                                      (eq. 13, T steps)

A denoiser is `eps_fn(z_t, gamma_t) -> ε̂`. The schedule is an array pytree `params` read by
`gamma(params, t)`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import losses, sampling
from ddpm_jax.runtime.errors import check_batch

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
SCHEDULES = ("fixed", "learned")
NUM_BINS = 256
# v_j = j/127.5 - 1 in IEEE float32 (a table: inside a loop XLA may divide by a reciprocal, and the
# top bin must stay exactly 1)
BIN_VALUES = np.arange(NUM_BINS, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


# --------------------------------------------------------------------------------------------------
# Noise schedules.


def init_schedule(
  rng: Array, kind: str, gamma_min: float = -13.3, gamma_max: float = 5.0, n_features: int = 1024
) -> dict[str, Array]:
  """Parameters of γ: the endpoints γ_0 = gamma_min, γ_1 = gamma_max and, for "learned", the
  monotone network γ̃(t) = l1(t) + l3(φ(l2(t))) / n_features with non-negative weights (VDM App. H;
  l1 starts linear)."""
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown VDM schedule {kind!r}; valid: {', '.join(SCHEDULES)}.")
  params = {
    "gamma_0": jnp.asarray(gamma_min, jnp.float32),
    "gamma_1": jnp.asarray(gamma_max, jnp.float32),
  }
  if kind == "learned":
    k2, k3 = jax.random.split(rng)
    params["net"] = {
      "w1": jnp.ones((), jnp.float32),
      "w2": jax.random.normal(k2, (n_features,)),
      "b2": jnp.zeros((n_features,)),
      "w3": jax.random.normal(k3, (n_features,)),
    }
  return params


def _monotone_net(net: dict[str, Array], t: Array) -> Array:
  """γ̃(t) [B]; |w| keeps every layer non-decreasing, so γ̃ is increasing in t."""
  hidden = jnp.abs(net["w2"]) * (2.0 * t[:, None] - 1.0) + net["b2"]  # [B, n_features]
  hidden = 2.0 * (jax.nn.sigmoid(hidden) - 0.5)
  return jnp.abs(net["w1"]) * t + hidden @ jnp.abs(net["w3"]) / net["w3"].shape[0]


def normalized_shape(params: dict[str, Array], t: Array) -> Array:
  """ũ(t) ∈ [0, 1] [B]: t for the fixed schedule, (γ̃(t) - γ̃(0)) / (γ̃(1) - γ̃(0)) for the learned
  one."""
  if "net" not in params:
    return t
  ends = _monotone_net(params["net"], jnp.array([0.0, 1.0]))
  return (_monotone_net(params["net"], t) - ends[0]) / (ends[1] - ends[0])


def gamma_from_shape(params: dict[str, Array], u: Array) -> Array:
  return params["gamma_0"] + (params["gamma_1"] - params["gamma_0"]) * u


def gamma(params: dict[str, Array], t: Array) -> Array:
  """γ(t) = -log SNR(t) [B]."""
  return gamma_from_shape(params, normalized_shape(params, t))


def alpha_sigma(gamma_t: Array) -> tuple[Array, Array]:
  """α = √sigmoid(-γ), σ = √sigmoid(γ): α² + σ² = 1 and α²/σ² = SNR = e^{-γ}."""
  return jnp.sqrt(jax.nn.sigmoid(-gamma_t)), jnp.sqrt(jax.nn.sigmoid(gamma_t))


def q_sample(gamma_t: Array, x: Array, noise: Array) -> Array:
  """z_t = α_t x + σ_t ε."""
  alpha, sigma = alpha_sigma(gamma_t)
  return losses.expand_to(alpha, x) * x + losses.expand_to(sigma, x) * noise


def time_samples(rng: Array, batch_size: int, antithetic: bool = True) -> Array:
  """t [B] ~ U(0, 1): i.i.d., or low-discrepancy t_i = (u + i/B) mod 1 with one u (VDM App. I.1):
  each t_i is still uniform, but together they cover [0, 1] evenly, which lowers the variance of the
  batch mean."""
  if not antithetic:
    return jax.random.uniform(rng, (batch_size,))
  return jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)


# --------------------------------------------------------------------------------------------------
# The VLB terms, [B] nats each.


def prior_loss(gamma_1: Array, x: Array) -> Array:
  """KL(N(α_1 x, σ_1² I) ‖ N(0, I)) = ½ Σ (σ_1² + α_1² x² - log σ_1² - 1)."""
  alpha, sigma = alpha_sigma(gamma_1)
  sigma2 = losses.expand_to(sigma**2, x)
  return 0.5 * losses.sum_flat(
    sigma2 + losses.expand_to(alpha**2, x) * x**2 - jnp.log(sigma2) - 1.0
  )


def decoder_logits(gamma_0: Array, z_0: Array) -> Array:
  """log p(x = v_j | z_0) up to a constant, over the bin values v_j = j/127.5 - 1: [B, H, W, C,
  256]."""
  alpha, _ = alpha_sigma(gamma_0)
  values = jnp.asarray(BIN_VALUES)
  rescaled = (z_0 / losses.expand_to(alpha, z_0))[..., None]
  return -0.5 * losses.expand_to(jnp.exp(-gamma_0), rescaled) * (rescaled - values) ** 2


def reconstruction_loss(gamma_0: Array, x: Array, noise: Array) -> Array:
  """-log p(x | z_0) with z_0 = α_0 x + σ_0 ε (one Monte-Carlo draw); x on the 8-bit grid in [-1,
  1]."""
  logits = decoder_logits(gamma_0, q_sample(gamma_0, x, noise))
  bins = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, NUM_BINS - 1).astype(jnp.int32)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), bins[..., None], axis=-1)[..., 0]
  return -losses.sum_flat(log_probs)


def diffusion_loss(dgamma_dt: Array, noise: Array, eps_hat: Array) -> Array:
  """Continuous-time diffusion loss estimate ½ γ'(t) ‖ε - ε̂‖² (eq. 17)."""
  return 0.5 * dgamma_dt * losses.sum_flat((noise - eps_hat) ** 2)


def discrete_diffusion_loss(
  gamma_t: Array, gamma_s: Array, noise: Array, eps_hat: Array, num_steps: int
) -> Array:
  """T-step diffusion loss estimate T/2 · (SNR(s)/SNR(t) - 1) ‖ε - ε̂‖² (eq. 13 with x̂ from ε̂)."""
  return 0.5 * num_steps * jnp.expm1(gamma_t - gamma_s) * losses.sum_flat((noise - eps_hat) ** 2)


def vlb_terms(
  params: dict[str, Array],
  eps_fn: EpsFn,
  x: Array,
  t: Array,
  noise: Array,
  recon_noise: Array,
  num_steps: int = 0,
  minimize_schedule_variance: bool = True,
) -> dict[str, Array]:
  """The VLB terms of data x [B, ...] in nats, [B] each, at times t [B] ~ U(0, 1) (with num_steps =
  T > 0 the T-step loss, t moved up to the grid i/T). -> dict(diffusion, prior, recon, total).

  Gradients: the network and the endpoints γ_0, γ_1 get the VLB's. In continuous time the VLB
  depends on the schedule only through γ_0, γ_1, so with `minimize_schedule_variance` the shape ũ of
  a learned schedule gets ∇ E[L_diffusion²] instead: it is trained to minimise the variance of the
  estimator (VDM §5.2, App. I.2)."""
  check_batch(t, integer_t=False, x=x, noise=noise, recon_noise=recon_noise)
  if num_steps:
    t = (jnp.floor(t * num_steps) + 1.0) / num_steps
  u_t, du_dt = jax.jvp(lambda t_: normalized_shape(params, t_), (t,), (jnp.ones_like(t),))

  def diffusion_term(u_t, du_dt):
    gamma_t = gamma_from_shape(params, u_t)
    eps_hat = eps_fn(q_sample(gamma_t, x, noise), gamma_t)
    if num_steps:
      return discrete_diffusion_loss(
        gamma_t, gamma(params, t - 1.0 / num_steps), noise, eps_hat, num_steps
      )
    return diffusion_loss((params["gamma_1"] - params["gamma_0"]) * du_dt, noise, eps_hat)

  if minimize_schedule_variance and "net" in params and not num_steps:
    diffusion = _with_squared_shape_gradient(diffusion_term, u_t, du_dt)
  else:
    diffusion = diffusion_term(u_t, du_dt)
  prior = prior_loss(params["gamma_1"], x)
  recon = reconstruction_loss(params["gamma_0"], x, recon_noise)
  return dict(diffusion=diffusion, prior=prior, recon=recon, total=diffusion + prior + recon)


def _with_squared_shape_gradient(
  term: Callable[[Array, Array], Array], u: Array, du: Array
) -> Array:
  """term(u, du) -> L [B], whose backward pass multiplies the cotangents of u and du by 2L: what
  reaches the schedule's shape is the gradient of Σ_i ḡ_i L_i², the estimator's second moment; every
  value that `term` closes over (network, endpoints, data) gets its ordinary gradient."""
  converted, consts = jax.closure_convert(term, u, du)

  @jax.custom_vjp
  def wrapped(u, du, consts):
    return converted(u, du, *consts)

  def fwd(u, du, consts):
    loss, vjp = jax.vjp(lambda u, du, consts: converted(u, du, *consts), u, du, consts)
    return loss, (loss, vjp)

  def bwd(residuals, cotangent):
    loss, vjp = residuals
    grad_u, grad_du, grad_consts = vjp(cotangent)
    return 2.0 * loss * grad_u, 2.0 * loss * grad_du, grad_consts

  wrapped.defvjp(fwd, bwd)
  return wrapped(u, du, consts)


# --------------------------------------------------------------------------------------------------
# Sampling.


def ancestral_step(
  params: dict[str, Array], eps_fn: EpsFn, z: Array, t: Array, s: Array, noise: Array
) -> Array:
  """z_s ~ q(z_s | z_t, x = x̂(z_t)), s < t [B] (App. A.4):
  z_s = α_s/α_t (z_t - σ_t c ε̂) + σ_s √c · noise with c = -expm1(γ_s - γ_t)."""
  gamma_t, gamma_s = gamma(params, t), gamma(params, s)
  eps_hat = eps_fn(z, gamma_t)
  c = -jnp.expm1(gamma_s - gamma_t)
  (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(gamma_t), alpha_sigma(gamma_s)
  mean = losses.expand_to(alpha_s / alpha_t, z) * (z - losses.expand_to(sigma_t * c, z) * eps_hat)
  return mean + losses.expand_to(sigma_s * jnp.sqrt(c), z) * noise


def decoded_mode(params: dict[str, Array], z_0: Array) -> Array:
  """The mode of p(x | z_0): the 8-bit value nearest z_0/α_0, in [-1, 1]."""
  gamma_0 = jnp.full((z_0.shape[0],), params["gamma_0"])
  bins = jnp.argmax(decoder_logits(gamma_0, z_0), axis=-1)
  return jnp.asarray(BIN_VALUES)[bins]


def sample(
  params: dict[str, Array], eps_fn: EpsFn, rng: Array, shape, num_steps: int = 1000
) -> Array:
  """Ancestral sampling of the continuous-time model (`ancestral_trajectory`) from z_1 ~ N(0, I),
  one `lax.scan`. -> x [B, ...] in [-1, 1]."""
  return sampling.sample(ancestral_trajectory(params, eps_fn, num_steps), rng, shape)


def ancestral_trajectory(
  params: dict[str, Array], eps_fn: EpsFn, num_steps: int = 1000
) -> sampling.Trajectory:
  """Ancestral steps t = k/T -> (k-1)/T from t = 1 (`ancestral_step`; a = α_t, s = σ_t), the last
  one ending in x = `decoded_mode`(z_0); the prior draw comes from fold_in(rng, T), the step from
  t = k/T draws from fold_in(rng, k). `params` (the schedule's) may be traced (a learned γ)."""
  alpha, sigma = alpha_sigma(gamma(params, jnp.arange(num_steps, 0, -1) / num_steps))

  def step(z, i, key):
    t = jnp.full((z.shape[0],), (num_steps - i) / num_steps)
    noise = jax.random.normal(key, z.shape, z.dtype)
    z = ancestral_step(params, eps_fn, z, t, t - 1.0 / num_steps, noise)
    return jax.lax.cond(i == num_steps - 1, lambda z: decoded_mode(params, z), lambda z: z, z)

  prior = lambda rng, shape: jax.random.normal(jax.random.fold_in(rng, num_steps), shape)
  levels = (jnp.append(alpha, 1.0), jnp.append(sigma, 0.0))
  noise_index = np.arange(num_steps, 0, -1)
  name = "ancestral sampling"
  return sampling.Trajectory(*levels, sampling.memoryless(step), noise_index, prior, name)
