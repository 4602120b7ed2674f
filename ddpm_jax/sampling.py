"""Samplers of the reverse process and the timestep respacing they run on.

Every sampler is a pure function whose whole loop is one `lax.scan`: wrap it in `jax.jit` (closing
over `d` and the model parameters' apply) and it compiles once per shape. `space_timesteps` picks
the steps to keep; `diffusion.respace` builds the `GaussianDiffusion` on them.

Guidance: `cond_fn(x_t, t) -> s·∇ log p(y | x_t)` shifts the ancestral mean by Σ·cond_fn (ADM
Algorithm 1) and DDIM's ε̂ by -√(1-ᾱ)·cond_fn (ADM Algorithm 2); `classifier_free_guidance` combines
conditional and null-label predictions into one model function (Ho & Salimans 2021).
"""

from __future__ import annotations

from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion

Array = jax.Array
CondFn = Callable[[Array, Array], Array]


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
  """The timesteps to keep from range(num_timesteps), sorted (Improved DDPM §4, its
  `space_timesteps`).

  section_counts:
    "ddimN"        the DDIM grid 0, s, 2s, … with the integer stride s that gives exactly N steps;
    [n1, n2, …]    split [0, T) into equal sections and take n_i evenly spaced steps (ends
                   included) in section i; also accepted as the string "n1,n2,…".
  """
  if num_timesteps <= 0:
    raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim") :])
      for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(
        f"No integer stride gives exactly {desired} DDIM steps out of {num_timesteps}."
      )
    section_counts = [int(x) for x in section_counts.split(",")]
  section_counts = list(section_counts)
  if not section_counts or any(c <= 0 for c in section_counts):
    raise ValueError(f"section_counts must be positive step counts, got {section_counts}.")
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, set()
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"Cannot take {count} steps from a section of {size} steps.")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    # accumulated, as the reference code does, so rounding ties agree with it
    for _ in range(count):
      steps.add(start + round(position))
      position += stride
    start += size
  return sorted(steps)


# fold_in index of x_T's noise: outside the range of step indices, which key the per-step noise.
_PRIOR_NOISE = 2**31 - 1


def _progress_reporter(name: str, total: int) -> Callable[[Array], None]:
  """A host callback that logs every 10 % of `total` steps once (sharded runs call it once per
  device)."""
  every, reported = max(total // 10, 1), set()

  def report(done):
    done = int(done)
    if done == 1:  # a new run of the compiled loop: report its progress again
      reported.clear()
    if done not in reported and (done % every == 0 or done == total):
      reported.add(done)
      logging.info("%s: step %d / %d", name, done, total)

  return report


def _reverse_scan(step, carry, num_steps: int, progress: str | None):
  """lax.scan of `step(carry, t)` over t = num_steps-1, …, 0; with `progress` (a name), logs as it
  goes."""
  if progress:
    report = _progress_reporter(progress, num_steps)

    def step_with_progress(carry, t):
      carry, out = step(carry, t)
      jax.debug.callback(report, num_steps - t)
      return carry, out

    return jax.lax.scan(step_with_progress, carry, jnp.arange(num_steps - 1, -1, -1))[0]
  return jax.lax.scan(step, carry, jnp.arange(num_steps - 1, -1, -1))[0]


def _initial_noise(rng: Array, shape, x_T: Array | None) -> Array:
  if x_T is None:
    if shape is None:
      raise ValueError("Give either `shape` or `x_T`.")
    return jax.random.normal(jax.random.fold_in(rng, _PRIOR_NOISE), shape)
  return x_T


def ddpm_sample(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  shape=None,
  x_T: Array | None = None,
  num_steps: int | None = None,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
  progress: bool = False,
) -> Array:
  """Ancestral sampling x_T ~ N(0, I), x_{t-1} ~ p_θ(x_{t-1} | x_t) (DDPM Algorithm 2), one
  `lax.scan`.

  No noise is added at the last step (t = 0). `num_steps` respaces to that many evenly spaced steps
  (Improved DDPM §4); respacing runs on the host, so `d` must be concrete (closed over, not traced).
  Noise for step t comes from `fold_in(rng, t)`. `progress` logs every 10 % of the steps.
  """
  if num_steps is not None:
    d = diffusion.respace(d, space_timesteps(d.num_timesteps, [num_steps]))
  x = _initial_noise(rng, shape, x_T)
  batch = x.shape[0]

  def step(x, t):
    t_b = jnp.full((batch,), t, dtype=jnp.int32)
    out = diffusion.p_mean_variance(d, model_fn(x, d.timestep_map[t_b]), x, t_b, clip_denoised)
    mean = out["mean"]
    if cond_fn is not None:  # ADM Algorithm 1: μ + s Σ ∇ log p(y | x_t)
      mean = mean + out["variance"] * cond_fn(x, d.timestep_map[t_b])
    noise = jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype)
    return mean + jnp.where(t > 0, jnp.exp(0.5 * out["log_variance"]), 0.0) * noise, None

  return _reverse_scan(step, x, d.num_timesteps, "ancestral sampling" if progress else None)


def _ddim_respaced(
  d: diffusion.GaussianDiffusion, num_steps: int | None
) -> diffusion.GaussianDiffusion:
  return (
    d
    if num_steps is None
    else diffusion.respace(d, space_timesteps(d.num_timesteps, f"ddim{num_steps}"))
  )


def _eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn):
  """(ε̂, x̂0) at x_t, ε̂ recomputed from the (clipped) x̂0 as the reference code does; guided if
  cond_fn."""
  out = diffusion.p_mean_variance(d, model_fn(x, d.timestep_map[t_b]), x, t_b, clip_denoised)
  eps = diffusion.predict_eps_from_x0(d, x, t_b, out["pred_x0"])
  if cond_fn is None:
    return eps, out["pred_x0"]
  # ADM Algorithm 2: ε̂ - √(1-ᾱ_t) s ∇ log p(y | x_t), and x̂0 from the shifted ε̂.
  eps = eps - diffusion.extract(d.sqrt_one_minus_alphas_cumprod, t_b, x.ndim) * cond_fn(
    x, d.timestep_map[t_b]
  )
  return eps, diffusion.predict_x0_from_eps(d, x, t_b, eps)


def ddim_sample(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  shape=None,
  x_T: Array | None = None,
  num_steps: int | None = 50,
  eta: float = 0.0,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
  progress: bool = False,
) -> Array:
  """DDIM (Song et al. 2021, eq. 12) on the grid `space_timesteps(T, f"ddim{num_steps}")`, one
  `lax.scan`:

    x_{t-1} = √ᾱ_{t-1} x̂0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,
    σ_t = η √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-1}).

  η = 0 is the deterministic DDIM ODE; η = 1 is ancestral sampling with the β̃ variance. The last
  step ends at ᾱ = 1. `num_steps=None` runs on `d` as given.
  """
  d = _ddim_respaced(d, num_steps)
  x = _initial_noise(rng, shape, x_T)
  batch = x.shape[0]

  def step(x, t):
    t_b = jnp.full((batch,), t, dtype=jnp.int32)
    eps, pred_x0 = _eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)
    # σ_t² = η² (1-ᾱ_{t-1})/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ_{t-1}) = η² β̃_t on this grid, precomputed in
    # float64.
    sigma_sq = eta**2 * d.posterior_variance[t]
    one_minus_alpha_bar_prev = jnp.where(
      t > 0, d.one_minus_alphas_cumprod[jnp.maximum(t - 1, 0)], 0.0
    )
    noise = jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype)
    mean = (
      jnp.sqrt(d.alphas_cumprod_prev[t]) * pred_x0
      + jnp.sqrt(jnp.maximum(one_minus_alpha_bar_prev - sigma_sq, 0.0)) * eps
    )
    return mean + jnp.sqrt(sigma_sq) * noise, None

  return _reverse_scan(step, x, d.num_timesteps, "DDIM sampling" if progress else None)


def ddim_encode(
  d: diffusion.GaussianDiffusion, model_fn: diffusion.ModelFn, x0: Array, num_steps: int | None = 50
) -> Array:
  """x0 -> x_T by the DDIM ODE run forwards (DDIM §4.3): x at ᾱ_i = √ᾱ_i x̂0 + √(1 - ᾱ_i) ε̂, i = 0,
  …, n-1, with (ε̂, x̂0) predicted at the previous grid point (at x0 itself, as t = 0, for the first
  step).

  Decode with `ddim_sample(d, model_fn, rng, x_T=…, num_steps=…, eta=0, clip_denoised=False)`.
  """
  d = _ddim_respaced(d, num_steps)
  batch = x0.shape[0]

  def step(x, i):
    source = jnp.full((batch,), jnp.maximum(i - 1, 0), dtype=jnp.int32)
    eps, pred_x0 = _eps_and_x0(d, model_fn, x, source, False, None)
    return jnp.sqrt(d.alphas_cumprod[i]) * pred_x0 + d.sqrt_one_minus_alphas_cumprod[i] * eps, None

  x, _ = jax.lax.scan(step, x0, jnp.arange(d.num_timesteps))
  return x


def slerp(z1: Array, z2: Array, alpha: float | Array) -> Array:
  """Spherical interpolation between two latents (DDIM §5.3): sin((1-α)θ)/sin θ · z1 + sin(αθ)/sin θ
  · z2, θ the angle between z1 and z2 (per example over all but the batch axis)."""
  axes = tuple(range(1, z1.ndim))
  cos = jnp.sum(z1 * z2, axis=axes, keepdims=True) / (
    jnp.linalg.norm(z1.reshape(z1.shape[0], -1), axis=1).reshape((-1,) + (1,) * len(axes))
    * jnp.linalg.norm(z2.reshape(z2.shape[0], -1), axis=1).reshape((-1,) + (1,) * len(axes))
  )
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  return (jnp.sin((1 - alpha) * theta) * z1 + jnp.sin(alpha * theta) * z2) / jnp.sin(theta)


def classifier_free_guidance(
  conditional_fn: diffusion.ModelFn,
  unconditional_fn: diffusion.ModelFn,
  guidance_scale: float,
  num_channels: int,
) -> diffusion.ModelFn:
  """ε̃ = (1 + w) ε(x_t, y) - w ε(x_t, ∅)  (Ho & Salimans 2021, eq. 6); w = 0: the conditional model.

  Only the first `num_channels` (the mean parameterisation) are combined; a learned variance is
  taken from the conditional prediction.
  """

  def model_fn(x_t, t):
    cond, uncond = conditional_fn(x_t, t), unconditional_fn(x_t, t)
    guided = (1 + guidance_scale) * cond[..., :num_channels] - guidance_scale * uncond[
      ..., :num_channels
    ]
    return jnp.concatenate([guided, cond[..., num_channels:]], axis=-1)

  return model_fn


def classifier_guidance(
  log_prob_fn: Callable[[Array, Array], Array], labels: Array, scale: float
) -> CondFn:
  """cond_fn(x_t, t) = s ∇_x log p(y | x_t) from `log_prob_fn(x_t, t) -> log-probabilities [B,
  classes]` of a noisy classifier (ADM §4)."""

  def selected_log_prob(x, t):
    log_probs = log_prob_fn(x, t)
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  return lambda x, t: scale * jax.grad(selected_log_prob)(x, t)


def log_snr_uniform_timesteps(d: diffusion.GaussianDiffusion, num_steps: int) -> list[int]:
  """`num_steps` distinct timesteps of `d` (host, concrete) nearest to uniform spacing in
  λ = log(√ᾱ/√(1-ᾱ)) between the first and the last step, both included; where λ moves faster than
  the grid (near t = 0), consecutive steps are taken instead."""
  num_timesteps = d.num_timesteps
  if not 1 < num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [2, {num_timesteps}], got {num_steps}.")
  alphas_cumprod = np.cumprod(1.0 - np.asarray(d.betas, np.float64))
  log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))  # decreasing in t
  steps: list[int] = []
  for k, target in enumerate(np.linspace(log_snr[0], log_snr[-1], num_steps)):
    lowest = steps[-1] + 1 if steps else 0
    highest = num_timesteps - (num_steps - k)  # leave room for the steps still to come
    steps.append(int(np.clip(np.argmin(np.abs(log_snr - target)), lowest, highest)))
  return steps


def dpm_solver_sample(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  shape=None,
  x_T: Array | None = None,
  num_steps: int = 20,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
  progress: bool = False,
) -> Array:
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the probability-flow ODE in λ = log(α/σ), α =
  √ᾱ, σ = √(1-ᾱ), with data prediction D = x̂0 and one model evaluation per step, one `lax.scan`:

    x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D̃,  h = λ_t - λ_s,
    D̃ = (1 + 1/(2r)) D_s - 1/(2r) D_prev, r = h_prev/h
  (first order, D̃ = D_s, at the first and last step).

  Runs on `num_steps` grid points uniform in λ (the spacing the paper recommends; steps of equal h
  keep the extrapolation r ≈ 1); the last step lands at ᾱ = 1 (σ = 0), where x = D̃.
  """
  d = diffusion.respace(d, log_snr_uniform_timesteps(d, num_steps))
  x = _initial_noise(rng, shape, x_T)
  batch, n = x.shape[0], d.num_timesteps
  # λ at each grid point
  log_snr = 0.5 * (jnp.log(d.alphas_cumprod) - d.log_one_minus_alphas_cumprod)

  def step(carry, i):
    x, x0_prev, h_prev = carry
    t_b = jnp.full((batch,), i, dtype=jnp.int32)
    _, x0 = _eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)
    # Target point: the previous grid point, or ᾱ = 1 (σ = 0, λ = ∞) after index 0.
    sigma_ratio = (
      jnp.where(i > 0, d.sqrt_one_minus_alphas_cumprod[jnp.maximum(i - 1, 0)], 0.0)
      / (d.sqrt_one_minus_alphas_cumprod[i])
    )
    alpha_t = jnp.sqrt(d.alphas_cumprod_prev[i])
    h = jnp.where(i > 0, log_snr[jnp.maximum(i - 1, 0)] - log_snr[i], jnp.inf)
    second_order = (i < n - 1) & (i > 0)
    half_inv_r = jnp.where(second_order, h / (2 * jnp.where(second_order, h_prev, 1.0)), 0.0)
    x0_tilde = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
    x = sigma_ratio * x - alpha_t * jnp.expm1(-h) * x0_tilde
    return (x, x0, h), None

  x, _, _ = _reverse_scan(
    step, (x, jnp.zeros_like(x), jnp.ones(())), n, "DPM-Solver++ sampling" if progress else None
  )
  return x
