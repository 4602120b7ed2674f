"""Score SDEs (Song et al. 2021) and NCSN's annealed Langevin dynamics (Song & Ermon 2019),
score_sde's conventions.

Time is continuous, t ∈ (0, T = 1], an array [B]. An SDE is a small pytree with pure methods:
  s.sde(x, t) -> (drift, diffusion)             dx = f(x, t) dt + g(t) dw
  s.marginal_prob(x0, t) -> (mean, std)         p_0t(x_t | x0) = N(mean, std² I)
  s.prior_sampling(rng, shape); s.prior_logp(z) -> [B]
  s.discretize(x, t) -> (f, G)                  x_{i+1} = x_i + f + G z, the SDE's discretisation
A score function is `score_fn(x, t) -> ∇x log p_t(x)`; samplers are compiled loops (`lax.scan`).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import losses, sampling
from ddpm_jax.runtime.errors import check_batch

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


@flax.struct.dataclass
class VPSDE:
  """Variance preserving: dx = -½β(t) x dt + √β(t) dw, β(t) = β_min + t(β_max - β_min) (the
  continuous DDPM).
  Its discretisation with N = 1000 steps uses DDPM's linear βs from 1e-4 to 0.02."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = flax.struct.field(pytree_node=False, default=1000)
  T: float = flax.struct.field(pytree_node=False, default=1.0)

  @property
  def discrete_betas(self) -> np.ndarray:
    return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  def _beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def _log_mean_coeff(self, t):
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def sde(self, x, t):
    beta = losses.expand_to(self._beta(t), x)
    return -0.5 * beta * x, jnp.sqrt(self._beta(t))

  def marginal_prob(self, x0, t):
    log_mean_coeff = self._log_mean_coeff(t)
    return losses.expand_to(jnp.exp(log_mean_coeff), x0) * x0, jnp.sqrt(
      -jnp.expm1(2.0 * log_mean_coeff)
    )

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    return standard_normal_logp(z)

  def discretize(self, x, t):
    """DDPM's step: x_{i+1} = √(1-β_i) x_i + √β_i z, i.e. f = (√(1-β_i) - 1) x, G = √β_i."""
    index = (t * (self.N - 1) / self.T).astype(jnp.int32)
    betas = self.discrete_betas
    # √(1-β) - 1 = -β / (1 + √(1-β)), in float64: no cancellation for small β.
    f_coeff = jnp.asarray(-betas / (1.0 + np.sqrt(1.0 - betas)), jnp.float32)[index]
    return losses.expand_to(f_coeff, x) * x, jnp.asarray(np.sqrt(betas), jnp.float32)[index]

  def langevin_scale(self, t):
    """α_i of the Langevin corrector's step size (score_sde: the discrete α for VP, 1 otherwise)."""
    index = (t * (self.N - 1) / self.T).astype(jnp.int32)
    return 1.0 - jnp.asarray(self.discrete_betas, jnp.float32)[index]


@flax.struct.dataclass
class subVPSDE(VPSDE):
  """sub-VP: dx = -½β(t) x dt + √(β(t)(1 - e^{-2∫β})) dw; its std is 1 - e^{∫...}, below VP's (Song
  et al. §3.4)."""

  def sde(self, x, t):
    drift, _ = VPSDE.sde(self, x, t)
    discount = -jnp.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
    return drift, jnp.sqrt(self._beta(t) * discount)

  def marginal_prob(self, x0, t):
    log_mean_coeff = self._log_mean_coeff(t)
    return losses.expand_to(jnp.exp(log_mean_coeff), x0) * x0, -jnp.expm1(2.0 * log_mean_coeff)

  def discretize(self, x, t):
    return euler_maruyama_discretization(self, x, t)

  def langevin_scale(self, t):
    return jnp.ones_like(t)


@flax.struct.dataclass
class VESDE:
  """Variance exploding: dx = σ(t) √(2 log(σ_max/σ_min)) dw, σ(t) = σ_min (σ_max/σ_min)^t (NCSN's
  geometric σs)."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = flax.struct.field(pytree_node=False, default=1000)
  T: float = flax.struct.field(pytree_node=False, default=1.0)

  @property
  def discrete_sigmas(self) -> np.ndarray:
    return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

  def _sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    return jnp.zeros_like(x), self._sigma(t) * math.sqrt(
      2 * (math.log(self.sigma_max) - math.log(self.sigma_min))
    )

  def marginal_prob(self, x0, t):
    return x0, self._sigma(t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    n = math.prod(z.shape[1:])
    return -0.5 * n * math.log(2 * math.pi * self.sigma_max**2) - losses.sum_flat(z**2) / (
      2 * self.sigma_max**2
    )

  def discretize(self, x, t):
    """SMLD's step: x_{i+1} = x_i + √(σ_{i+1}² - σ_i²) z."""
    index = (t * (self.N - 1) / self.T).astype(jnp.int32)
    sigmas = jnp.asarray(self.discrete_sigmas, jnp.float32)
    adjacent = jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigmas[index] ** 2 - adjacent**2)

  def langevin_scale(self, t):
    return jnp.ones_like(t)


SDE = VPSDE | VESDE  # subVPSDE is a VPSDE


def euler_maruyama_discretization(s, x, t):
  """f = f(x, t) Δt, G = g(t) √Δt with Δt = T/N."""
  drift, diffusion = s.sde(x, t)
  dt = s.T / s.N
  return drift * dt, diffusion * math.sqrt(dt)


# --------------------------------------------------------------------------------------------------
# Training: continuous-time denoising score matching (Song et al. eq. 7).


def dsm_loss(
  s, score_fn: ScoreFn, x0: Array, t: Array, noise: Array, likelihood_weighting: bool = False
) -> Array:
  """Per-example ‖λ(t)^½ (s_θ(x_t, t) - ∇ log p_0t(x_t | x0))‖² summed over dimensions, x_t = mean +
  std·z:

    λ(t) = std(t)²  (score_sde's default)  ->  ‖std · s_θ + z‖²,
    λ(t) = g(t)²    (likelihood weighting, Song et al. 2021b)  ->  g² ‖s_θ + z/std‖².

  t [B] ~ U(eps, T) and noise z are drawn by the caller (as for `diffusion.training_losses`). ->
  [B]."""
  check_batch(t, integer_t=False, x0=x0, noise=noise)
  mean, std = s.marginal_prob(x0, t)
  std_b = losses.expand_to(std, x0)
  score = score_fn(mean + std_b * noise, t)
  if likelihood_weighting:
    _, g = s.sde(x0, t)
    return losses.sum_flat((score + noise / std_b) ** 2) * g**2
  return losses.sum_flat((score * std_b + noise) ** 2)


NOISE_CONDITIONINGS = ("t", "sigma")


def model_score_fn(
  s, model_fn: Callable[[Array, Array], Array], conditioning: str = "t"
) -> ScoreFn:
  """A U-Net predicting ε as a score, -ε̂/std(t). The network is conditioned on `conditioning`:
  "t":     t·(N-1), DDPM's timestep scale (score_sde's DDPM++ models);
  "sigma": log σ with σ = std(t) of p_0t, the noise level itself (NCSN/NCSN++, with Fourier
  features)."""
  if conditioning not in NOISE_CONDITIONINGS:
    raise ValueError(
      f"Unknown noise conditioning {conditioning!r}; valid: {', '.join(NOISE_CONDITIONINGS)}."
    )

  def score_fn(x, t):
    _, std = s.marginal_prob(jnp.zeros_like(x), t)
    label = t * (s.N - 1) if conditioning == "t" else jnp.log(std)
    return -model_fn(x, label) / losses.expand_to(std, x)

  return score_fn


# --------------------------------------------------------------------------------------------------
# Predictor-corrector sampling (Song et al. 2021, Algorithm 1-4).


def _reverse_discretize(s, score_fn, x, t):
  """The reverse-time step's (f, G): f - G² ∇ log p_t, G (Song et al. eq. 45)."""
  f, g = s.discretize(x, t)
  return f - losses.expand_to(g, x) ** 2 * score_fn(x, t), g


def reverse_diffusion_predictor(s, score_fn, x, t, rng):
  rev_f, g = _reverse_discretize(s, score_fn, x, t)
  x_mean = x - rev_f
  return x_mean + losses.expand_to(g, x) * jax.random.normal(rng, x.shape), x_mean


def euler_maruyama_predictor(s, score_fn, x, t, rng):
  dt = -s.T / s.N
  drift, diffusion = s.sde(x, t)
  drift = drift - losses.expand_to(diffusion, x) ** 2 * score_fn(x, t)
  x_mean = x + drift * dt
  return x_mean + losses.expand_to(diffusion, x) * math.sqrt(-dt) * jax.random.normal(
    rng, x.shape
  ), x_mean


# The vmap axis of a batch sampled one example at a time (jobs/sample: each sample on its own key);
# statistics over "the batch" include it.
SAMPLE_AXIS = "samples"


def batch_mean(value: Array) -> Array:
  """`value` (a mean over the batch axis) averaged over SAMPLE_AXIS too, where it is bound."""
  try:
    return jax.lax.pmean(value, SAMPLE_AXIS)
  except NameError:  # not sampled one at a time: the batch axis is the whole batch
    return value


def langevin_corrector(s, score_fn, x, t, rng, snr: float, n_steps: int):
  """Langevin MCMC with the step size set by the signal-to-noise ratio `snr` (Song et al. Algorithm
  4), from the norms' means over the whole batch as score_sde's LangevinCorrector (`batch_mean`)."""
  alpha = s.langevin_scale(t)
  x_mean = x
  for i in range(n_steps):
    grad = score_fn(x, t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    grad_norm = batch_mean(jnp.mean(jnp.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1)))
    noise_norm = batch_mean(jnp.mean(jnp.linalg.norm(noise.reshape(noise.shape[0], -1), axis=-1)))
    # A zero score (e.g. a freshly initialised model) makes no correction rather than dividing by
    # zero.
    safe_norm = jnp.where(grad_norm > 0, grad_norm, 1.0)
    step_size = losses.expand_to(
      jnp.where(grad_norm > 0, (snr * noise_norm / safe_norm) ** 2 * 2 * alpha, 0.0), x
    )
    x_mean = x + step_size * grad
    x = x_mean + jnp.sqrt(2 * step_size) * noise
  return x, x_mean


def ancestral_sampling_predictor(s, score_fn, x, t, rng):
  """DDPM's and SMLD's ancestral step on the SDE's own discretisation (Song et al. Appendix F):
  VP x_{i-1} = (x_i + β_i ∇ log p)/√(1 - β_i) + √β_i z; VE x_{i-1} = x_i + (σ_i² - σ_{i-1}²) ∇ log p
  + √(σ_{i-1}² (σ_i² - σ_{i-1}²)/σ_i²) z."""
  if isinstance(s, subVPSDE) or not isinstance(s, (VPSDE, VESDE)):
    raise ValueError("The ancestral predictor is defined for the VP and VE SDEs, not sub-VP.")
  index = (t * (s.N - 1) / s.T).astype(jnp.int32)
  score = score_fn(x, t)
  noise = jax.random.normal(rng, x.shape)
  if isinstance(s, VESDE):
    sigmas = jnp.asarray(s.discrete_sigmas, jnp.float32)
    sigma = losses.expand_to(sigmas[index], x)
    adjacent = losses.expand_to(jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)]), x)
    x_mean = x + score * (sigma**2 - adjacent**2)
    return x_mean + jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2) * noise, x_mean
  beta = losses.expand_to(jnp.asarray(s.discrete_betas, jnp.float32)[index], x)
  x_mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
  return x_mean + jnp.sqrt(beta) * noise, x_mean


def annealed_langevin_corrector(s, score_fn, x, t, rng, snr: float, n_steps: int):
  """NCSN's annealed Langevin step at the level of t: step size 2 α (snr · std(t))², α as in
  `langevin_corrector` (score_sde's AnnealedLangevinDynamics)."""
  alpha = losses.expand_to(s.langevin_scale(t), x)
  std = losses.expand_to(s.marginal_prob(jnp.zeros_like(t), t)[1], x)
  step_size = (snr * std) ** 2 * 2 * alpha
  x_mean = x
  for i in range(n_steps):
    x_mean = x + step_size * score_fn(x, t)
    x = x_mean + jnp.sqrt(2 * step_size) * jax.random.normal(jax.random.fold_in(rng, i), x.shape)
  return x, x_mean


PREDICTORS = {
  "reverse_diffusion": reverse_diffusion_predictor,
  "euler_maruyama": euler_maruyama_predictor,
  "ancestral": ancestral_sampling_predictor,
  "none": None,
}
CORRECTORS = {
  "langevin": langevin_corrector,
  "annealed_langevin": annealed_langevin_corrector,
  "none": None,
}


def pc_sample(
  s,
  score_fn: ScoreFn,
  rng: Array,
  shape,
  predictor: str = "reverse_diffusion",
  corrector: str = "langevin",
  snr: float = 0.16,
  n_corrector: int = 1,
  denoise: bool = True,
  eps: float = 1e-3,
) -> Array:
  """Predictor-corrector sampling (`pc_trajectory`) from the prior at t = T to t = eps over s.N
  steps, one `lax.scan`; with `denoise`, the last predictor step's mean (no noise) is returned."""
  trajectory = pc_trajectory(s, score_fn, predictor, corrector, snr, n_corrector, denoise, eps)
  return sampling.sample(trajectory, rng, shape)


def pc_trajectory(
  s,
  score_fn: ScoreFn,
  predictor: str = "reverse_diffusion",
  corrector: str = "langevin",
  snr: float = 0.16,
  n_corrector: int = 1,
  denoise: bool = True,
  eps: float = 1e-3,
) -> sampling.Trajectory:
  """Predictor-corrector sampling (`pc_step`) on its grid t_i from T to eps (`pc_timesteps`): level
  i has a = m(t_i), s = std(t_i); the prior draw comes from fold_in(rng, N), step i's noise from
  fold_in(rng, i)."""
  with jax.ensure_compile_time_eval():
    timesteps = pc_timesteps(s, eps)
    mean, std = s.marginal_prob(jnp.ones(timesteps.shape), timesteps)
  pc, last = pc_step(s, score_fn, predictor, corrector, snr, n_corrector), s.N - 1

  def step(x, i, key):
    x, x_mean = pc(x, timesteps[i], key)
    return jnp.where(i == last, x_mean, x) if denoise else x

  prior = lambda rng, shape: s.prior_sampling(jax.random.fold_in(rng, s.N), shape)
  levels = (jnp.append(mean, 1.0), jnp.append(std, 0.0))
  name = "predictor-corrector sampling"
  return sampling.Trajectory(*levels, sampling.memoryless(step), np.arange(s.N), prior, name)


def pc_timesteps(s, eps: float = 1e-3) -> Array:
  """The predictor-corrector grid t_i, i = 0, …, N - 1, from T to eps: [N]."""
  return jnp.linspace(s.T, eps, s.N)


def pc_step(
  s,
  score_fn: ScoreFn,
  predictor: str = "reverse_diffusion",
  corrector: str = "langevin",
  snr: float = 0.16,
  n_corrector: int = 1,
) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
  """step(x, t (a scalar), key) -> (x, x_mean): the corrector then the predictor at t, as
  `pc_sample` runs them."""
  if predictor not in PREDICTORS:
    raise ValueError(f"Unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}.")
  if corrector not in CORRECTORS:
    raise ValueError(f"Unknown corrector {corrector!r}; valid: {', '.join(CORRECTORS)}.")

  def step(x, t, key):
    t = jnp.full((x.shape[0],), t)
    x_mean = x
    if CORRECTORS[corrector] is not None:
      x, x_mean = CORRECTORS[corrector](
        s, score_fn, x, t, jax.random.fold_in(key, 0), snr, n_corrector
      )
    if PREDICTORS[predictor] is not None:
      x, x_mean = PREDICTORS[predictor](s, score_fn, x, t, jax.random.fold_in(key, 1))
    return x, x_mean

  return step


def annealed_langevin_sample(
  sigmas,
  score_fn: ScoreFn,
  rng: Array,
  shape,
  n_steps_each: int = 100,
  step_lr: float = 2e-5,
  denoise: bool = True,
) -> Array:
  """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), one `lax.scan` over all
  levels and steps:
  for each σ_i (decreasing), α_i = ε σ_i²/σ_L² and n_steps_each times x ← x + α_i/2 ∇ log p_σi(x) +
  √α_i z. `score_fn(x, sigma)` takes σ [B]. With `denoise`, a final Tweedie step x + σ_L² ∇ log
  p_σL(x)."""
  sigmas = jnp.asarray(sigmas, jnp.float32)
  # NCSN starts from U[0, 1]; other keys fold i
  x = jax.random.uniform(jax.random.fold_in(rng, 2**31 - 1), shape)
  levels = jnp.repeat(jnp.arange(sigmas.shape[0]), n_steps_each)

  def step(x, i_and_level):
    i, level = i_and_level
    sigma = jnp.full((shape[0],), sigmas[level])
    alpha = step_lr * (sigmas[level] / sigmas[-1]) ** 2
    noise = jax.random.normal(jax.random.fold_in(rng, i), shape)
    return x + 0.5 * alpha * score_fn(x, sigma) + jnp.sqrt(alpha) * noise, None

  x, _ = jax.lax.scan(step, x, (jnp.arange(levels.shape[0]), levels))
  if denoise:
    x = x + sigmas[-1] ** 2 * score_fn(x, jnp.full((shape[0],), sigmas[-1]))
  return x


# --------------------------------------------------------------------------------------------------
# Probability-flow ODE (Song et al. §4.3): dx/dt = f(x, t) - ½ g(t)² ∇ log p_t(x), same marginals as
# the SDE.

# Tsit5 evaluates the drift 6 times per step (7 stages, first-same-as-last) plus once at the start.
_TSIT5_EVALS_PER_STEP = 6


def probability_flow_drift(s, score_fn: ScoreFn, x: Array, t: Array) -> Array:
  drift, diffusion = s.sde(x, t)
  return drift - 0.5 * losses.expand_to(diffusion, x) ** 2 * score_fn(x, t)


def _solve(drift_fn, y0, t0: float, t1: float, rtol: float, atol: float, max_steps: int):
  import diffrax  # adaptive Runge-Kutta (Tsit5) with a PID step-size controller

  return diffrax.diffeqsolve(
    diffrax.ODETerm(lambda t, y, args: drift_fn(t, y)),
    diffrax.Tsit5(),
    t0=t0,
    t1=t1,
    dt0=(t1 - t0) / 100,
    y0=y0,
    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    max_steps=max_steps,
  )


def ode_sample(
  s,
  score_fn: ScoreFn,
  rng: Array,
  shape=None,
  z: Array | None = None,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  eps: float = 1e-3,
  max_steps: int = 4096,
) -> tuple[Array, Array]:
  """Solves the probability-flow ODE from x_T = z (or a prior draw) at t = T to t = eps with an
  adaptive solver.
  -> (x, number of score evaluations)."""
  if z is None:
    if shape is None:
      raise ValueError("Give either `shape` or `z`.")
    z = s.prior_sampling(rng, shape)
  drift_fn = lambda x, t: probability_flow_drift(s, score_fn, x, t)
  return solve_ode(drift_fn, z, s.T, eps, rtol, atol, max_steps)


def solve_ode(
  drift_fn: Callable[[Array, Array], Array],
  x: Array,
  t0: float,
  t1: float,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
) -> tuple[Array, Array]:
  """x(t1) of dx/dt = drift_fn(x, t[B]) from x(t0) = x by an adaptive solver (diffrax's Tsit5
  with a PID step-size controller), with the number of drift evaluations."""
  batch = x.shape[0]
  sol = _solve(lambda t, y: drift_fn(y, jnp.full((batch,), t)), x, t0, t1, rtol, atol, max_steps)
  return sol.ys[-1], _TSIT5_EVALS_PER_STEP * sol.stats["num_steps"] + 1


def ode_log_likelihood(
  s,
  score_fn: ScoreFn,
  x: Array,
  rng: Array,
  hutchinson: bool = True,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  eps: float = 1e-5,
  max_steps: int = 4096,
) -> Array:
  """log p_eps(x) in nats [B] by the instantaneous change of variables (Song et al. eq. 39):
  log p_0(x(0)) = log p_T(x(T)) + ∫_0^T ∇·f̃(x(t), t) dt, integrating x and the divergence from eps
  to T.

  The divergence is exact or Hutchinson's estimate (`ode_log_density_change`). For 8-bit images
  use `bits_per_dim`, which dequantises first.
  """
  drift_fn = lambda y, t: probability_flow_drift(s, score_fn, y, t)
  delta, x_T = ode_log_density_change(drift_fn, x, rng, eps, s.T, hutchinson, rtol, atol, max_steps)
  return s.prior_logp(x_T) + delta


def ode_log_density_change(
  drift_fn: Callable[[Array, Array], Array],
  x: Array,
  rng: Array,
  t0: float,
  t1: float,
  hutchinson: bool = True,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
) -> tuple[Array, Array]:
  """(∫_t0^t1 ∇·f(x(t), t) dt [B], x(t1)) along dx/dt = f(x, t[B]) from x(t0) = x, by an adaptive
  solver (diffrax's Tsit5): log p_t0(x) = log p_t1(x(t1)) + the integral (the instantaneous change
  of variables). The divergence is exact (one Jacobian-vector product per dimension; small data
  only) or Hutchinson's unbiased estimate E_ε[εᵀ ∂f/∂x ε] with one Rademacher ε per example, fixed
  along the path (FFJORD)."""
  batch, dims = x.shape[0], math.prod(x.shape[1:])
  probe = jax.random.rademacher(rng, x.shape).astype(x.dtype)

  def divergence(x, t):
    drift = lambda y: drift_fn(y, t)
    if hutchinson:
      _, jvp = jax.jvp(drift, (x,), (probe,))
      return losses.sum_flat(jvp * probe)
    basis = jnp.eye(dims, dtype=x.dtype).reshape((dims,) + x.shape[1:])
    diag = jax.vmap(
      lambda e: losses.sum_flat(jax.jvp(drift, (x,), (jnp.broadcast_to(e, x.shape),))[1] * e)
    )(basis)
    return jnp.sum(diag, axis=0)

  def augmented(t, state):
    y, _ = state
    t_b = jnp.full((batch,), t)
    return drift_fn(y, t_b), divergence(y, t_b)

  sol = _solve(augmented, (x, jnp.zeros((batch,), x.dtype)), t0, t1, rtol, atol, max_steps)
  return sol.ys[1][-1], sol.ys[0][-1]


def bits_per_dim(
  s, score_fn: ScoreFn, images_uint8: Array, rng: Array, hutchinson: bool = True
) -> Array:
  """Bits/dim of 8-bit data by the probability-flow ODE (`dequantized_bits_per_dim`). -> [B]."""
  log_likelihood = lambda y, key: ode_log_likelihood(s, score_fn, y, key, hutchinson=hutchinson)
  return dequantized_bits_per_dim(log_likelihood, images_uint8, rng)


def dequantized_bits_per_dim(
  log_likelihood: Callable[[Array, Array], Array], images_uint8: Array, rng: Array
) -> Array:
  """Bits/dim of 8-bit data, comparable with `diffusion.calc_bpd_loop`, from a continuous model's
  `log_likelihood(y, rng) -> log p(y)` [B] in nats: uniform dequantisation u = (x + U[0, 1))/256,
  model space y = 2u - 1, so -log₂ P(x)/D ≤ -log p(y)/(D ln 2) - 1 + 8. -> [B]."""
  noise_rng, ode_rng = jax.random.split(rng)
  u = (images_uint8.astype(jnp.float32) + jax.random.uniform(noise_rng, images_uint8.shape)) / 256.0
  dims = math.prod(images_uint8.shape[1:])
  return -log_likelihood(2.0 * u - 1.0, ode_rng) / (dims * math.log(2.0)) + 7.0


def data_bits_per_dim(
  log_likelihood: Callable[[Array, Array], Array], x0: Array, rng: Array, continuous_data: bool
) -> Array:
  """Bits/dim of data x0 [B, ...] from a continuous model's `log_likelihood(y, rng) -> log p(y)` [B]
  in nats: continuous data's -log p(x0)/(D ln 2) (an autoencoder's latents), else that of x0's
  8-bit images in [-1, 1] (`dequantized_bits_per_dim`). -> [B]."""
  if continuous_data:
    return losses.bits_per_dim(-log_likelihood(x0, rng), x0)
  images = jnp.round((x0 + 1.0) * 127.5).astype(jnp.uint8)
  return dequantized_bits_per_dim(log_likelihood, images, rng)


def standard_normal_logp(z: Array) -> Array:
  """log N(z; 0, I) per example [B]."""
  return -0.5 * math.prod(z.shape[1:]) * math.log(2 * math.pi) - 0.5 * losses.sum_flat(z**2)


def mean_coeff(s: SDE, t: Array) -> Array:
  """m(t) of the marginal x_t = m(t) x0 + std(t) ε (1 for VE)."""
  return jnp.ones_like(t) if isinstance(s, VESDE) else jnp.exp(s._log_mean_coeff(t))


def sigma_of_t(s: SDE, t: Array) -> Array:
  """σ(t) = std(t)/m(t), the noise level of x_t/m(t) = x0 + σ ε (VP: √(1/m² - 1))."""
  return s.marginal_prob(jnp.zeros_like(t), t)[1] / mean_coeff(s, t)


def t_of_sigma(s: SDE, sigma: Array) -> Array:
  """The inverse of `sigma_of_t`: VE t = log(σ/σ_min)/log(σ_max/σ_min); VP and subVP, with
  -log m = ¼ Δβ t² + ½ β_min t, the root t = (√(β_min² + 4 Δβ (-log m)) - β_min)/Δβ of m(σ): VP
  m = 1/√(1 + σ²), subVP m = 2/(√(σ² + 4) + σ) (of σ m = 1 - m²)."""
  if isinstance(s, VESDE):
    return jnp.log(sigma / s.sigma_min) / math.log(s.sigma_max / s.sigma_min)
  if isinstance(s, subVPSDE):
    minus_log_m = jnp.log(0.5 * (jnp.sqrt(sigma**2 + 4.0) + sigma))  # without the cancellation
  else:
    minus_log_m = 0.5 * jnp.log1p(sigma**2)
  delta = s.beta_max - s.beta_min
  return (jnp.sqrt(s.beta_min**2 + 4.0 * delta * minus_log_m) - s.beta_min) / delta


def sigma_denoiser(s: SDE, score_fn: ScoreFn):
  """D(x; σ) [B, ...] -> E[x0 | x] of a score model on x = x0 + σ ε (Tweedie, at x_t = m x):
  D = (x_t + std² ∇ log p_t(x_t))/m = x + σ² m ∇ log p_t(m x), t = t_of_sigma(σ)."""

  def denoise(x, sigma):
    t = t_of_sigma(s, sigma)
    m = losses.expand_to(mean_coeff(s, t), x)
    return x + losses.expand_to(sigma, x) ** 2 * m * score_fn(m * x, t)

  return denoise
