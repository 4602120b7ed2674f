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
from ddpm_jax.runtime.errors import check_batch

Array = jax.Array
CondFn = Callable[[Array, Array], Array]
# (x at a step, the step (an int, traced), key) -> x at the next step of a sampler's grid
Step = Callable[[Array, Array, Array], Array]


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
  """The timesteps to keep from range(num_timesteps), sorted (Improved DDPM §4, its
  `space_timesteps`).

  section_counts:
    "ddimN"        the DDIM grid 0, s, 2s, … with the integer stride s that gives exactly N steps;
    "trailingN"    round(T - iT/N) - 1, i < N: N steps ending at T - 1 (Lin et al. 2024, Table 2;
                   zero terminal SNR needs the sampler to start at ᾱ_T = 0);
    [n1, n2, …]    split [0, T) into equal sections and take n_i evenly spaced steps (ends
                   included) in section i; also accepted as the string "n1,n2,…".
  """
  if num_timesteps <= 0:
    raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
  if isinstance(section_counts, str):
    if section_counts.startswith("trailing"):
      desired = int(section_counts[len("trailing") :])
      if not 0 < desired <= num_timesteps:
        raise ValueError(f"Cannot take {desired} trailing steps out of {num_timesteps}.")
      return sorted(
        {round(num_timesteps - i * num_timesteps / desired) - 1 for i in range(desired)}
      )
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
PRIOR_NOISE = 2**31 - 1


def progress_reporter(name: str, total: int) -> Callable[[Array], None]:
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
    report = progress_reporter(progress, num_steps)

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
    if not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape) or len(shape) < 2:
      raise ValueError(f"shape must be positive sizes (B, ...); got {shape}.")
    return jax.random.normal(jax.random.fold_in(rng, PRIOR_NOISE), shape)
  check_batch(x_T=x_T)
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
  d = respaced_for(d, "ddpm", num_steps)
  step = ddpm_step(d, model_fn, clip_denoised, cond_fn)
  scan_step = lambda x, t: (step(x, t, jax.random.fold_in(rng, t)), None)
  x = _initial_noise(rng, shape, x_T)
  return _reverse_scan(scan_step, x, d.num_timesteps, "ancestral sampling" if progress else None)


def ddpm_step(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Step:
  """step(x_t, t, key) -> x_{t-1} ~ p_θ(x_{t-1} | x_t), t a step of `d` (no noise at t = 0)."""

  def step(x, t, key):
    t_b = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    out = diffusion.p_mean_variance(d, model_fn(x, d.timestep_map[t_b]), x, t_b, clip_denoised)
    mean = out["mean"]
    if cond_fn is not None:  # ADM Algorithm 1: μ + s Σ ∇ log p(y | x_t)
      mean = mean + out["variance"] * cond_fn(x, d.timestep_map[t_b])
    noise = jax.random.normal(key, x.shape, x.dtype)
    return mean + jnp.where(t > 0, jnp.exp(0.5 * out["log_variance"]), 0.0) * noise

  return step


def respaced_for(
  d: diffusion.GaussianDiffusion, sampler: str, num_steps: int | None
) -> diffusion.GaussianDiffusion:
  """`d` on the grid of `num_steps` steps that `sampler`'s sampling function runs on (None: `d` as
  given): "ddpm" evenly spaced (Improved DDPM §4), "ddim" `space_timesteps`' "ddim" spacing,
  "dpm_solver" uniform in λ (`log_snr_uniform_timesteps`). Host-side: `d` must be concrete."""
  if num_steps is None:
    return d
  kept = {
    "ddpm": lambda: space_timesteps(d.num_timesteps, [num_steps]),
    "ddim": lambda: space_timesteps(d.num_timesteps, f"ddim{num_steps}"),
    "dpm_solver": lambda: log_snr_uniform_timesteps(d, num_steps),
  }[sampler]()
  return diffusion.respace(d, kept)


def eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn):
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
  d = respaced_for(d, "ddim", num_steps)
  step = ddim_step(d, model_fn, eta, clip_denoised, cond_fn)
  scan_step = lambda x, t: (step(x, t, jax.random.fold_in(rng, t)), None)
  x = _initial_noise(rng, shape, x_T)
  return _reverse_scan(scan_step, x, d.num_timesteps, "DDIM sampling" if progress else None)


def ddim_step(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  eta: float | Array = 0.0,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Step:
  """step(x_t, t, key) -> x_{t-1}, DDIM's eq. 12 on the steps of `d` (`ddim_sample`)."""

  def step(x, t, key):
    t_b = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    eps, pred_x0 = eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)
    # σ_t² = η² (1-ᾱ_{t-1})/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ_{t-1}) = η² β̃_t on this grid, precomputed in
    # float64.
    sigma_sq = eta**2 * d.posterior_variance[t]
    one_minus_alpha_bar_prev = jnp.where(
      t > 0, d.one_minus_alphas_cumprod[jnp.maximum(t - 1, 0)], 0.0
    )
    noise = jax.random.normal(key, x.shape, x.dtype)
    mean = (
      jnp.sqrt(d.alphas_cumprod_prev[t]) * pred_x0
      + jnp.sqrt(jnp.maximum(one_minus_alpha_bar_prev - sigma_sq, 0.0)) * eps
    )
    return mean + jnp.sqrt(sigma_sq) * noise

  return step


def ddim_encode(
  d: diffusion.GaussianDiffusion, model_fn: diffusion.ModelFn, x0: Array, num_steps: int | None = 50
) -> Array:
  """x0 -> x_T by the DDIM ODE run forwards (DDIM §4.3): x at ᾱ_i = √ᾱ_i x̂0 + √(1 - ᾱ_i) ε̂, i = 0,
  …, n-1, with (ε̂, x̂0) predicted at the previous grid point (at x0 itself, as t = 0, for the first
  step).

  Decode with `ddim_sample(d, model_fn, rng, x_T=…, num_steps=…, eta=0, clip_denoised=False)`.
  """
  d = respaced_for(d, "ddim", num_steps)
  batch = x0.shape[0]

  def step(x, i):
    source = jnp.full((batch,), jnp.maximum(i - 1, 0), dtype=jnp.int32)
    eps, pred_x0 = eps_and_x0(d, model_fn, x, source, False, None)
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
  guidance_rescale: float = 0.0,
) -> diffusion.ModelFn:
  """ε̃ = (1 + w) ε(x_t, y) - w ε(x_t, ∅)  (Ho & Salimans 2021, eq. 6); w = 0: the conditional model.

  Only the first `num_channels` (the mean parameterisation) are combined; a learned variance is
  taken from the conditional prediction. `guidance_rescale` φ (Lin et al. 2024, §3.4, Algorithm 2)
  pulls the guided output's per-example std back towards the conditional one's:
  ε̃ ← ε̃ (φ std(ε(x_t, y))/std(ε̃) + 1 - φ).
  """

  def model_fn(x_t, t):
    cond, uncond = conditional_fn(x_t, t), unconditional_fn(x_t, t)
    cond_mean = cond[..., :num_channels]
    guided = (1 + guidance_scale) * cond_mean - guidance_scale * uncond[..., :num_channels]
    if guidance_rescale:
      axes = tuple(range(1, x_t.ndim))
      std_ratio = jnp.std(cond_mean, axis=axes, keepdims=True) / jnp.std(
        guided, axis=axes, keepdims=True
      )
      guided = guided * (guidance_rescale * std_ratio + 1.0 - guidance_rescale)
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
  d = respaced_for(d, "dpm_solver", num_steps)
  x = _initial_noise(rng, shape, x_T)
  batch, n = x.shape[0], d.num_timesteps
  # (α, σ) at each grid point, and at the target (α, σ) = (1, 0) after index 0
  scale = jnp.append(1.0, d.sqrt_alphas_cumprod)
  std = jnp.append(0.0, d.sqrt_one_minus_alphas_cumprod)

  def step(carry, i):
    x, x0_prev, h_prev = carry
    t_b = jnp.full((batch,), i, dtype=jnp.int32)
    _, x0 = eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)
    x, h = dpmpp_2m_update(x, x0, x0_prev, h_prev, scale[i + 1], std[i + 1], scale[i], std[i])
    return (x, x0, h), None

  x, _, _ = _reverse_scan(
    step, (x, jnp.zeros_like(x), jnp.zeros(())), n, "DPM-Solver++ sampling" if progress else None
  )
  return x


def dpmpp_2m_update(
  x: Array,
  denoised: Array,
  denoised_prev: Array,
  h_prev: Array,
  scale: Array,
  std: Array,
  scale_next: Array,
  std_next: Array,
  noise: Array | None = None,
) -> tuple[Array, Array]:
  """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2) from x = α x0 + σ ε at (α, σ) =
  (scale, std) to (scale_next, std_next), in λ = log(α/σ), with the data prediction D = x̂0(x):

    x' = (σ'/σ) x - α' (e^{-h} - 1) D̃,  h = λ' - λ,  D̃ = D + (D - D_prev) h / (2 h_prev)
  first order (D̃ = D) where h_prev = 0 (no previous step) or h = ∞ (σ' = 0, where x' = α' D).
  With `noise` z, DPM-Solver++(2M) SDE (η = 1, k-diffusion's midpoint variant):
    x' = (σ'/σ) e^{-h} x - α' (e^{-2h} - 1) D̃ + σ' √(1 - e^{-2h}) z.
  -> (x', h), h the next step's h_prev."""
  h = jnp.log(scale_next * std / (scale * std_next))  # ∞ at σ' = 0
  second_order = (h_prev > 0) & jnp.isfinite(h)
  half_inv_r = jnp.where(second_order, h / (2 * jnp.where(second_order, h_prev, 1.0)), 0.0)
  denoised = denoised + half_inv_r * (denoised - denoised_prev)
  ratio = std_next / std
  if noise is None:
    return ratio * x - scale_next * jnp.expm1(-h) * denoised, h
  decay = -jnp.expm1(-2 * h)  # 1 - e^{-2h}
  return ratio * jnp.exp(-h) * x + scale_next * decay * denoised + std_next * jnp.sqrt(
    decay
  ) * noise, h


# σ-space sampling (Karras et al. 2022, "EDM"; k-diffusion's conventions): every model as a
# denoiser D(x; σ) of x = y + σ n, sampled along a decreasing grid of σ ending at 0.
SIGMA_SOLVERS = ("euler", "heun", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde")
# the solvers whose step depends on the current σ only (the DPM-Solver++ ones carry the last D)
ONE_STEP_SIGMA_SOLVERS = ("euler", "heun", "euler_ancestral")
DenoiseFn = Callable[[Array, Array], Array]  # (x [B, ...], σ [B]) -> D(x; σ)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Array:
  """σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ for i < n, and σ_n = 0 (EDM eq. 5),
  computed in float64: [num_steps + 1]."""
  if num_steps < 1 or not 0 < sigma_min < sigma_max:
    raise ValueError(
      f"karras_sigmas needs num_steps >= 1 and 0 < sigma_min < sigma_max; got {num_steps}, "
      f"{sigma_min}, {sigma_max}."
    )
  ramp = np.linspace(0.0, 1.0, num_steps)
  inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
  return jnp.asarray(np.append(sigmas, 0.0), jnp.float32)


def _ancestral_step(sigma: Array, sigma_next: Array) -> tuple[Array, Array]:
  """(σ_down, σ_up) of an ancestral step σ -> σ_next (η = 1): σ_up² = σ_next² (σ² - σ_next²)/σ²,
  σ_down² = σ_next² - σ_up²."""
  sigma_up = jnp.minimum(
    sigma_next, jnp.sqrt(jnp.maximum(sigma_next**2 * (sigma**2 - sigma_next**2), 0.0)) / sigma
  )
  return jnp.sqrt(jnp.maximum(sigma_next**2 - sigma_up**2, 0.0)), sigma_up


def sigma_sample(
  denoise_fn: DenoiseFn,
  x: Array,
  sigmas: Array,
  solver: str,
  rng: Array | None = None,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
  progress: bool = False,
) -> Array:
  """x ~ p(x; σ_0) (the caller's σ_0 · z) -> x at σ_n (0: a sample), one `lax.scan` over the grid
  `sigmas` [n + 1] (decreasing; a traced array, so that any grid of one length compiles once):

    euler, heun      dx/dσ = (x - D(x; σ))/σ, Euler or Heun's 2nd order (EDM Algorithms 1 and 2;
                     Heun's last step, to σ = 0, is Euler's), with EDM's stochastic churn: x̂ = x +
                     √(σ̂² - σ²) s_noise z, σ̂ = σ (1 + γ), γ = min(s_churn / n, √2 - 1) where
                     s_tmin ≤ σ ≤ s_tmax
    dpmpp_2m         DPM-Solver++(2M) in t = -log σ (Lu et al. 2022)
    euler_ancestral  an Euler step to σ_down, then noise σ_up z
    dpmpp_2m_sde     DPM-Solver++(2M) SDE, midpoint correction, η = 1

  `rng` draws step i's noise z from fold_in(rng, i): needed by the stochastic solvers and churn.
  Network calls: n (euler, dpmpp_*, euler_ancestral), 2n - 1 (heun to σ_n = 0)."""
  if solver not in SIGMA_SOLVERS:
    raise ValueError(f"Unknown σ-space solver {solver!r}; valid: {', '.join(SIGMA_SOLVERS)}.")
  stochastic = solver in ("euler_ancestral", "dpmpp_2m_sde") or s_churn > 0
  if stochastic and rng is None:
    raise ValueError(f"solver={solver!r} with s_churn={s_churn} draws noise: pass rng.")
  if s_churn > 0 and solver not in ("euler", "heun"):
    raise ValueError(f"s_churn is for the 'euler' and 'heun' solvers, not {solver!r}.")
  check_batch(x=x)
  sigmas = jnp.asarray(sigmas, jnp.float32)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f"sigmas must be a grid [n + 1] with n >= 1; got shape {sigmas.shape}.")
  num_steps, batch = sigmas.shape[0] - 1, x.shape[0]
  churn = dict(
    gamma_max=min(s_churn / num_steps, 2**0.5 - 1), s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise
  )
  denoise = lambda x, sigma: denoise_fn(x, jnp.full((batch,), sigma, x.dtype))
  noise = lambda i: jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)

  def step(carry, i):
    x, denoised_prev, h_prev = carry
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    if solver in ONE_STEP_SIGMA_SOLVERS:
      key = None if rng is None else jax.random.fold_in(rng, i)
      x, denoised = sigma_step(denoise_fn, x, sigma, sigma_next, solver, key, **churn)
      return (x, denoised, h_prev), None
    denoised = denoise(x, sigma)  # DPM-Solver++ with α = 1: λ = -log σ
    one = jnp.ones((), x.dtype)
    noise_i = noise(i) * s_noise if solver == "dpmpp_2m_sde" else None
    x, h = dpmpp_2m_update(x, denoised, denoised_prev, h_prev, one, sigma, one, sigma_next, noise_i)
    return (x, denoised, h), None

  step_fn = step
  if progress:
    report = progress_reporter(f"{solver} sampling", num_steps)

    def step_fn(carry, i):
      carry, out = step(carry, i)
      jax.debug.callback(report, i + 1)
      return carry, out

  carry = (x, jnp.zeros_like(x), jnp.zeros((), x.dtype))
  return jax.lax.scan(step_fn, carry, jnp.arange(num_steps))[0][0]


def sigma_step(
  denoise_fn: DenoiseFn,
  x: Array,
  sigma: Array,
  sigma_next: Array,
  solver: str,
  key: Array | None,
  gamma_max: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
) -> tuple[Array, Array]:
  """One step σ -> σ_next of a solver in `ONE_STEP_SIGMA_SOLVERS` (see `sigma_sample`; γ_max the
  churn's min(s_churn / n, √2 - 1)): -> (x at σ_next, the step's D(x; σ))."""
  denoise = lambda x, sigma: denoise_fn(x, jnp.full((x.shape[0],), sigma, x.dtype))
  derivative = lambda x, sigma, denoised: (x - denoised) / sigma
  if solver == "euler_ancestral":
    denoised = denoise(x, sigma)
    sigma_down, sigma_up = _ancestral_step(sigma, sigma_next)
    x = x + derivative(x, sigma, denoised) * (sigma_down - sigma)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + jnp.where(sigma_next > 0, sigma_up * s_noise, 0.0) * noise, denoised
  if gamma_max > 0:
    gamma = jnp.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma_max, 0.0)
    # √(σ̂² - σ²) as σ √(γ (2 + γ)): exactly 0 at γ = 0 (XLA's fused multiply-add can make
    # σ̂² - σ² a negative round-off there)
    noise = jax.random.normal(key, x.shape, x.dtype)
    x = x + sigma * jnp.sqrt(gamma * (2 + gamma)) * s_noise * noise
    sigma = sigma * (1 + gamma)
  denoised = denoise(x, sigma)
  d = derivative(x, sigma, denoised)
  dt = sigma_next - sigma
  x_euler = x + d * dt
  if solver == "heun":  # the 2nd evaluation, except on a last step to σ = 0

    def corrected(_):
      d_next = derivative(x_euler, sigma_next, denoise(x_euler, sigma_next))
      return x + 0.5 * (d + d_next) * dt

    x_euler = jax.lax.cond(sigma_next > 0, corrected, lambda _: x_euler, None)
  return x_euler, denoised


def sigma_to_t(log_sigmas: Array, sigma: Array) -> Array:
  """The fractional timestep of σ [B] on a discrete model's increasing log σ_t grid [T]: linear in
  log σ between the neighbouring integer steps, clamped to [0, T - 1] (k-diffusion's
  DiscreteSchedule.sigma_to_t)."""
  log_sigma = jnp.log(sigma)
  low = jnp.clip(jnp.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
  w = jnp.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
  return (1.0 - w) * low + w * (low + 1)


def discrete_sigmas(d: diffusion.GaussianDiffusion) -> Array:
  """σ_t = √((1 - ᾱ_t)/ᾱ_t) of each step [T]: x_t/√ᾱ_t = x0 + σ_t ε."""
  return d.sqrt_recipm1_alphas_cumprod


def discrete_denoiser(
  d: diffusion.GaussianDiffusion, model_fn: diffusion.ModelFn, clip_denoised: bool = False
) -> DenoiseFn:
  """D(x; σ) of a model trained on the discrete diffusion `d` (not respaced): x = x_t/√ᾱ_t, so the
  model sees x/√(1 + σ²) at t = sigma_to_t(σ) (fractional), and its ε / x0 / v prediction
  (d.mean_type; extra variance channels ignored) gives x̂0 (k-diffusion's DiscreteEpsDDPMDenoiser
  and its v variant); `clip_denoised` clips x̂0 to [-1, 1]."""
  log_sigmas = jnp.log(discrete_sigmas(d))

  def denoise(x, sigma):
    c = (1.0 / jnp.sqrt(sigma**2 + 1.0)).reshape((-1,) + (1,) * (x.ndim - 1))  # √ᾱ
    s = sigma.reshape(c.shape)
    out = model_fn(x * c, sigma_to_t(log_sigmas, sigma))[..., : x.shape[-1]]
    if d.mean_type == "eps":  # x0 = (x_t - √(1-ᾱ) ε)/√ᾱ = x - σ ε
      x0 = x - s * out
    elif d.mean_type == "x0":
      x0 = out
    else:  # v = √ᾱ ε - √(1-ᾱ) x0: x0 = √ᾱ x_t - √(1-ᾱ) v
      x0 = c**2 * x - s * c * out
    return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0

  return denoise
