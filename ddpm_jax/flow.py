"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; SiT, Ma et al. 2024; SD3,
Esser et al. 2024), in the SD3 / diffusers convention: t ∈ [0, 1], t = 0 the data, t = 1 noise.

  x_t = α_t x0 + σ_t ε      linear: α_t = 1 - t, σ_t = t; cosine (SiT's GVP): cos(πt/2), sin(πt/2)
  v = dx_t/dt = α'_t x0 + σ'_t ε      (linear: ε - x0), the network's regression target
  sampling: dx/dt = v_θ(x, t) from t = 1 (x ~ N(0, I)) down to t = 0, by Euler or Heun

  from ddpm_jax import flow
  x_t = flow.interpolate(x0, noise, t, path="linear")
  v = flow.velocity(x0, noise, t, path="linear")
  ts = flow.timesteps(num_steps, shift=1.0)             # [num_steps + 1] from 1 down to 0
  x0 = flow.sample(velocity_fn, x_1, ts, solver="euler")  # velocity_fn(x, t[B]) -> v
  x0, nfe = flow.sample_adaptive(velocity_fn, x_1)      # diffrax's Tsit5, to a tolerance
  x0 = flow.sample_sde(velocity_fn, x_1, ts, key)         # SiT's reverse SDE, Euler–Maruyama
  log_p = flow.log_likelihood(velocity_fn, x0, rng)       # nats [B], the ODE from 0 to 1
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import sde

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> v [B, ...]


def _linear(t):
  return 1.0 - t, t, -jnp.ones_like(t), jnp.ones_like(t)


def _cosine(t):
  angle = 0.5 * math.pi * t
  half_pi = 0.5 * math.pi
  return jnp.cos(angle), jnp.sin(angle), -half_pi * jnp.sin(angle), half_pi * jnp.cos(angle)


# path -> t [B] -> (α_t, σ_t, dα/dt, dσ/dt)
PATHS = {"linear": _linear, "cosine": _cosine}
SOLVERS = ("euler", "heun")  # fixed grids; `sample_adaptive` has none
T_SAMPLINGS = ("uniform", "logit_normal")
# what the network regresses (SiT's model types): v, or x0 (singular at t = 0, where σ_t = 0) or
# ε (singular at t = 1, where α_t = 0), turned into v for sampling by `to_velocity`
PREDICTIONS = ("velocity", "x0", "epsilon")


def coefficients(t: Array, path: str = "linear") -> tuple[Array, Array, Array, Array]:
  """(α_t, σ_t, α'_t, σ'_t) of `path`, each [B]."""
  if path not in PATHS:
    raise ValueError(f"Unknown flow path {path!r}; known: {', '.join(PATHS)}.")
  return PATHS[path](jnp.asarray(t, jnp.float32))


def _per_example(a: Array, x: Array) -> Array:
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def interpolate(x0: Array, noise: Array, t: Array, path: str = "linear") -> Array:
  """x_t = α_t x0 + σ_t ε; t [B]."""
  alpha, sigma, _, _ = coefficients(t, path)
  return _per_example(alpha, x0) * x0 + _per_example(sigma, x0) * noise


def velocity(x0: Array, noise: Array, t: Array, path: str = "linear") -> Array:
  """v = dx_t/dt = α'_t x0 + σ'_t ε (linear: ε - x0)."""
  _, _, d_alpha, d_sigma = coefficients(t, path)
  return _per_example(d_alpha, x0) * x0 + _per_example(d_sigma, x0) * noise


def target(prediction: str, x0: Array, noise: Array, t: Array, path: str = "linear") -> Array:
  """What a network of `prediction` regresses at x_t: v, x0 or ε."""
  if prediction == "velocity":
    return velocity(x0, noise, t, path)
  if prediction in ("x0", "epsilon"):
    return x0 if prediction == "x0" else noise
  raise ValueError(f"Unknown flow prediction {prediction!r}; known: {', '.join(PREDICTIONS)}.")


def to_velocity(prediction: str, out: Array, x_t: Array, t: Array, path: str = "linear") -> Array:
  """v = α' x0 + σ' ε from a network's `prediction` at x_t = α x0 + σ ε: x0 gives
  ε = (x_t - α x0) / σ, ε gives x0 = (x_t - σ ε) / α."""
  if prediction == "velocity":
    return out
  alpha, sigma, d_alpha, d_sigma = (_per_example(c, x_t) for c in coefficients(t, path))
  if prediction == "x0":
    return d_alpha * out + d_sigma * (x_t - alpha * out) / sigma
  if prediction == "epsilon":
    return d_alpha * (x_t - sigma * out) / alpha + d_sigma * out
  raise ValueError(f"Unknown flow prediction {prediction!r}; known: {', '.join(PREDICTIONS)}.")


def noise_from_velocity(v: Array, x_t: Array, t: Array, path: str = "linear") -> Array:
  """ε̂ = (α v - α' x_t) / (α σ' - α' σ), solving v = α' x0 + σ' ε, x_t = α x0 + σ ε for ε (the
  determinant is 1 on the linear path, π/2 on the cosine one: regular on all of [0, 1])."""
  alpha, sigma, d_alpha, d_sigma = (_per_example(c, x_t) for c in coefficients(t, path))
  return (alpha * v - d_alpha * x_t) / (alpha * d_sigma - d_alpha * sigma)


def score_from_velocity(v: Array, x_t: Array, t: Array, path: str = "linear") -> Array:
  """∇ log p_t(x_t) = -ε̂ / σ_t (Tweedie), from the velocity."""
  sigma = _per_example(coefficients(t, path)[1], x_t)
  return -noise_from_velocity(v, x_t, t, path) / sigma


# SiT's diffusion coefficients w_t of the reverse SDE (`sde_step`) as (w_t, w_t / σ_t) of
# (t [B], α, σ, α', σ'): "sigma" w = σ_t (SiT's default); "sbdm" w = σ (σ' - α' σ / α), the VP SDE's
# (singular at t = 1, where α = 0)
DIFFUSIONS = {
  "sigma": lambda alpha, sigma, d_alpha, d_sigma: (sigma, jnp.ones_like(sigma)),
  "sbdm": lambda alpha, sigma, d_alpha, d_sigma: (
    sigma * (d_sigma - d_alpha * sigma / alpha),
    d_sigma - d_alpha * sigma / alpha,
  ),
}


def sde_step(
  velocity_fn: VelocityFn,
  x: Array,
  t: Array,
  t_next: Array,
  key: Array,
  path: str = "linear",
  diffusion: str = "sigma",
  norm: float = 1.0,
  noise: bool | Array = True,
) -> Array:
  """One Euler–Maruyama step from t down to t_next (scalars) of SiT's reverse SDE, whose marginals
  are the ODE's for every w_t = norm · DIFFUSIONS[diffusion]: dx = (v - w_t ∇log p_t) dt +
  √(2 w_t) dW̄ (Ma et al. 2024, eq. 8, with t running from noise to data); `noise` False: its mean
  alone (SiT's "Mean" last step)."""
  if diffusion not in DIFFUSIONS:
    raise ValueError(f"Unknown SDE diffusion {diffusion!r}; known: {', '.join(DIFFUSIONS)}.")
  times = jnp.full((x.shape[0],), t, jnp.float32)
  w, w_over_sigma = (norm * c for c in DIFFUSIONS[diffusion](*coefficients(times, path)))
  v = velocity_fn(x, times)
  # w ∇log p = -(w / σ) ε̂, without dividing by σ (0 at t = 0)
  w_score = -_per_example(w_over_sigma, x) * noise_from_velocity(v, x, times, path)
  h = t - t_next
  mean = x - h * (v - w_score)
  spread = jnp.sqrt(2.0 * _per_example(w, x) * h) * jax.random.normal(key, x.shape, x.dtype)
  return mean + jnp.where(noise, spread, 0.0)


def sample_sde(
  velocity_fn: VelocityFn,
  x_1: Array,
  ts,
  key: Array,
  path: str = "linear",
  diffusion: str = "sigma",
  norm: float = 1.0,
) -> Array:
  """x at ts[-1] from x_1 at ts[0] by `sde_step`s in one `lax.scan`, the last one its mean (no
  noise is added on the way into the data)."""
  ts = jnp.asarray(ts, jnp.float32)
  count = len(ts) - 1
  keys = jax.random.split(key, count)

  def body(x, inputs):
    i, step_key = inputs
    return sde_step(
      velocity_fn, x, ts[i], ts[i + 1], step_key, path, diffusion, norm, i < count - 1
    ), None

  return jax.lax.scan(body, x_1, (jnp.arange(count), keys))[0]


def shift_time(t: Array | np.ndarray, shift: float) -> Array | np.ndarray:
  """SD3's resolution shift t' = s t / (1 + (s - 1) t): s > 1 spends more steps near noise."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def timesteps(num_steps: int, shift: float = 1.0) -> np.ndarray:
  """[num_steps + 1] times from 1 down to 0, uniform then shifted (diffusers'
  FlowMatchEulerDiscreteScheduler with `shift`)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
  return shift_time(np.linspace(1.0, 0.0, num_steps + 1), shift).astype(np.float32)


def sample_t(key: Array, batch: int, how: str = "logit_normal", mean=0.0, std=1.0) -> Array:
  """Training times [B]: uniform on (0, 1), or SD3's logit-normal t = sigmoid(mean + std·n)."""
  if how == "uniform":
    return jax.random.uniform(key, (batch,))
  if how == "logit_normal":
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,)))
  raise ValueError(f"Unknown t sampling {how!r}; known: {', '.join(T_SAMPLINGS)}.")


def step(velocity_fn: VelocityFn, x: Array, t: Array, t_next: Array, solver: str) -> Array:
  """One step of dx/dt = v from t to t_next (scalars): Euler x + (t_next - t) v(x, t), or Heun's
  trapezoid with Euler's x as the predictor."""
  dt = t_next - t
  at = lambda time: jnp.full((x.shape[0],), time, jnp.float32)
  v = velocity_fn(x, at(t))
  if solver == "euler":
    return x + dt * v
  if solver == "heun":
    predicted = x + dt * v
    return x + 0.5 * dt * (v + velocity_fn(predicted, at(t_next)))
  raise ValueError(f"Unknown flow solver {solver!r}; known: {', '.join(SOLVERS)}.")


def euler_distillation_target(
  velocity_fn: VelocityFn, z_t: Array, t: Array, t_mid: Array, t_s: Array
) -> Array:
  """ṽ = (z_s - z_t)/(t_s - t) with z_s two Euler steps t -> t_mid -> t_s of `velocity_fn` from
  z_t: the velocity whose one Euler step lands where the two do (progressive distillation of a
  flow's Euler sampler; t, t_mid, t_s [B]). -> [B, ...]."""
  z_mid = z_t + _per_example(t_mid - t, z_t) * velocity_fn(z_t, t)
  z_s = z_mid + _per_example(t_s - t_mid, z_t) * velocity_fn(z_mid, t_mid)
  return (z_s - z_t) / _per_example(t_s - t, z_t)


def sample(velocity_fn: VelocityFn, x_1: Array, ts, solver: str = "euler") -> Array:
  """x at ts[-1] from x_1 at ts[0], one `step` per pair of times, in one `lax.scan` (reversed ts
  encode: data -> noise by the same solver)."""
  ts = jnp.asarray(ts, jnp.float32)

  def body(x, pair):
    return step(velocity_fn, x, pair[0], pair[1], solver), None

  return jax.lax.scan(body, x_1, jnp.stack([ts[:-1], ts[1:]], axis=1))[0]


def sample_adaptive(
  velocity_fn: VelocityFn,
  x_1: Array,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  t_range: tuple[float, float] = (1.0, 0.0),
  **options,
) -> tuple[Array, Array]:
  """(x at t_range[1], the number of velocity evaluations) from x_1 at t_range[0] by an adaptive
  solver (`sde.solve_ode`: diffrax's Tsit5 to the tolerances)."""
  return sde.solve_ode(velocity_fn, x_1, *t_range, rtol, atol, **options)


def log_likelihood(
  velocity_fn: VelocityFn,
  x0: Array,
  rng: Array,
  hutchinson: bool = True,
  t_range: tuple[float, float] = (0.0, 1.0),
  **solver,
) -> Array:
  """log p_0(x0) in nats [B] by the instantaneous change of variables along dx/dt = v from
  t_range[0] (0) to t_range[1] (1) (adaptive; `sde.ode_log_density_change`, whose `solver`
  options pass through): log p_0(x0) = log N(x_1; 0, I) + ∫_0^1 ∇·v(x_t, t) dt."""
  delta, x_1 = sde.ode_log_density_change(velocity_fn, x0, rng, *t_range, hutchinson, **solver)
  return sde.standard_normal_logp(x_1) + delta
