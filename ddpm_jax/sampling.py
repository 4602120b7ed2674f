"""Samplers of the reverse process and the timestep respacing they run on.

Every sampler on a fixed grid of noise levels is one `Trajectory` (its levels and its step), and one
runner, `run`, walks any of them down to the data in one `lax.scan`: `sample` from the prior,
`editing` with the known part of an image observed (RePaint's walk). The public samplers
(`ddpm_sample`, `ddim_sample`, `dpm_solver_sample`, `sigma_sample`) are `sample` of their
trajectory; wrap them in `jax.jit` (closing over `d` and the model parameters' apply) and they
compile once per shape. `space_timesteps` picks the steps to keep; `diffusion.respace` builds the
`GaussianDiffusion` on them.

Guidance: `cond_fn(x_t, t) -> s·∇ log p(y | x_t)` shifts the ancestral mean by Σ·cond_fn (ADM
Algorithm 1) and DDIM's ε̂ by -√(1-ᾱ)·cond_fn (ADM Algorithm 2); `classifier_free_guidance` combines
conditional and null-label predictions into one model function (Ho & Salimans 2021).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

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
DenoiseFn = Callable[[Array, Array], Array]  # (x [B, ...], σ [B]) -> D(x; σ)


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
      return diffusion.trailing_timesteps(num_timesteps, int(section_counts[len("trailing") :]))
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


# fold_in index of the known part's noise in editing (`run`), apart from the steps' and the prior's.
KNOWN_NOISE = PRIOR_NOISE - 1


class History(NamedTuple):
  """What a multistep step carries to the next: its data prediction D and its step h in λ (h = 0:
  none, the next step is first order)."""

  denoised: Array
  h: Array


# (x_i, history, i (traced), key) -> (x_{i+1}, history)
TrajectoryStep = Callable[[Array, History, Array, Array], tuple[Array, History]]
# (rng, shape) -> x at the first level, drawn from the sampler's prior
Prior = Callable[[Array, tuple], Array]


def standard_normal_prior(std: float | Array = 1.0) -> Prior:
  """x_0 = std · z, z ~ N(0, I) from fold_in(rng, PRIOR_NOISE)."""

  return lambda rng, shape: std * jax.random.normal(jax.random.fold_in(rng, PRIOR_NOISE), shape)


class Trajectory(NamedTuple):
  """A sampler as n steps down the noise levels x_i = a_i x0 + s_i ε, from i = 0 (where sampling
  starts) to i = n (the data: a_n = 1, s_n = 0). Step i draws its noise from
  fold_in(rng, noise_index[i]): each sampler's own keys, so that its samples stay what they
  were."""

  scale: np.ndarray | Array  # a_i [n + 1]
  noise_std: np.ndarray | Array  # s_i [n + 1]
  step: TrajectoryStep
  noise_index: np.ndarray  # [n] ints
  prior: Prior = standard_normal_prior()
  name: str = "sampling"  # for the progress logs

  @property
  def num_steps(self) -> int:
    return len(self.scale) - 1


def memoryless(step: Step) -> TrajectoryStep:
  """A step of the current x only, (x_i, i, key) -> x_{i+1}, as a `TrajectoryStep`."""
  return lambda x, history, i, key: (step(x, i, key), history)


def repaint_schedule(num_steps: int, resample: int = 1, jump: int = 1, start: int = 0):
  """RePaint's walk over the levels start … num_steps (Lugmayr et al. 2022, get_schedule_jump):
  down one level at a time, and on reaching a level num_steps - 1 - k·jump ≥ jump, back up `jump`
  levels, `resample` - 1 times each. -> (from, to) levels [K], to > from a step of the sampler,
  to < from a forward noising. resample = 1: the sampler's own walk, start … num_steps."""
  if resample < 1 or jump < 1:
    raise ValueError(f"resample and jump must be >= 1; got {resample} and {jump}.")
  if not 0 <= start <= num_steps:
    raise ValueError(f"start level {start} is not in [0, {num_steps}].")
  jumps = {level: resample - 1 for level in range(num_steps - 1, jump - 1, -jump)}
  pairs, level = [], start
  while level < num_steps:
    pairs.append((level, level + 1))
    level += 1
    if jumps.get(level, 0) > 0 and level - jump >= start:
      jumps[level] -= 1
      pairs.append((level, level - jump))
      level -= jump
  return np.asarray(pairs, np.int32).reshape(-1, 2)


# (x, the known part's draw at the same level) -> x with its known part replaced
Observe = Callable[[Array, Array], Array]


def run(
  trajectory: Trajectory,
  rng: Array,
  x: Array,
  start: int = 0,
  known: Array | None = None,
  observe: Observe | None = None,
  resample: int = 1,
  jump: int = 1,
  progress: str | None = None,
) -> Array:
  """x at level `start` -> the data along `trajectory`, one `lax.scan` over RePaint's walk
  (`repaint_schedule`; resample = 1: the sampler's steps). Where `known` is given, `observe(x,
  a x_known + s z)` follows every step and a multistep solver's last data prediction gets `known`
  (its exact value at the data level); a step back up draws q(x_j | x_i) and drops that prediction.
  With resampling, a level's step folds its visit count into its key. `progress` (a name) logs every
  10 % of the walk."""
  pairs = repaint_schedule(trajectory.num_steps, resample, jump, start)
  down = pairs[:, 1] > pairs[:, 0]
  visits, seen = np.zeros(len(pairs), np.int32), {}
  for k in np.flatnonzero(down):
    visits[k] = seen.get(pairs[k, 0], 0)
    seen[pairs[k, 0]] = visits[k] + 1
  noise_index = np.asarray(trajectory.noise_index)[pairs[:, 0]]
  scale, noise_std = (jnp.asarray(a, jnp.float32) for a in (trajectory.scale, trajectory.noise_std))
  noise = lambda key: jax.random.normal(key, x.shape, x.dtype)
  known_rng = jax.random.fold_in(rng, KNOWN_NOISE)
  report = progress_reporter(progress, len(pairs)) if progress else None

  def walk(carry, inputs):
    k, i, j, key_index, visit = inputs
    step_key = jax.random.fold_in(rng, key_index)
    if resample > 1:
      step_key = jax.random.fold_in(step_key, visit)
    known_key = jax.random.fold_in(known_rng, k)

    def denoise(carry):
      x, history = trajectory.step(*carry, i, step_key)
      if known is None:
        return x, history
      x = observe(x, scale[j] * known + noise_std[j] * noise(known_key))
      return x, history._replace(denoised=observe(history.denoised, known))

    def renoise(carry):  # q(x_j | x_i), j < i: (a_j/a_i) x_i + √(s_j² - (a_j/a_i)² s_i²) z
      (x, history), ratio = carry, scale[j] / scale[i]
      std = jnp.sqrt(jnp.maximum(noise_std[j] ** 2 - (ratio * noise_std[i]) ** 2, 0.0))
      return ratio * x + std * noise(known_key), history._replace(h=jnp.zeros_like(history.h))

    carry = denoise(carry) if down.all() else jax.lax.cond(j > i, denoise, renoise, carry)
    if report is not None:
      jax.debug.callback(report, k + 1)
    return carry, None

  history = History(jnp.zeros_like(x), jnp.zeros((), x.dtype))  # no previous step
  steps = (np.arange(len(pairs)), pairs[:, 0], pairs[:, 1], noise_index, visits)
  return jax.lax.scan(walk, (x, history), tuple(jnp.asarray(a) for a in steps))[0][0]


def sample(
  trajectory: Trajectory, rng: Array, shape=None, x_T: Array | None = None, progress: bool = False
) -> Array:
  """A sample along `trajectory` from its prior draw of `shape` (or from `x_T`)."""
  if x_T is None:
    if shape is None:
      raise ValueError("Give either `shape` or `x_T`.")
    if not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape) or len(shape) < 2:
      raise ValueError(f"shape must be positive sizes (B, ...); got {shape}.")
    x_T = trajectory.prior(rng, tuple(shape))
  else:
    check_batch(x_T=x_T)
  return run(trajectory, rng, x_T, progress=trajectory.name if progress else None)


def multistep_trajectory(
  denoise_at: Callable[[Array, Array], Array],
  scale,
  noise_std,
  s_noise: float | None = None,
  **fields,
) -> Trajectory:
  """DPM-Solver++(2M) (`dpmpp_2m_update`; with `s_noise`, its SDE variant with noise s_noise · z)
  on the levels (scale, noise_std) [n + 1] (s_n = 0), `denoise_at(x, i)` the data prediction at
  level i; `fields`: the Trajectory's noise_index, prior and name."""
  a, s = (jnp.asarray(levels, jnp.float32) for levels in (scale, noise_std))

  def step(x, history, i, key):
    denoised = denoise_at(x, i)
    noise = None if s_noise is None else jax.random.normal(key, x.shape, x.dtype) * s_noise
    x, h = dpmpp_2m_update(
      x, denoised, history.denoised, history.h, a[i], s[i], a[i + 1], s[i + 1], noise
    )
    return x, History(denoised, h)

  return Trajectory(scale, noise_std, step, **fields)


# ᾱ that the log-SNR and σ-space solvers take for ᾱ_T = 0 (zero terminal SNR, where λ = -∞ and
# σ = ∞): diffusers' choice (EulerDiscreteScheduler with rescale_betas_zero_snr), σ_T = 4096; the
# model itself is still evaluated at t = T - 1
ZERO_SNR_ALPHA_BAR = 2.0**-24


def solver_alphas_cumprod(alphas_cumprod):
  """ᾱ with ᾱ_T = 0 replaced by ZERO_SNR_ALPHA_BAR (numpy or jax)."""
  return alphas_cumprod + (alphas_cumprod == 0) * ZERO_SNR_ALPHA_BAR


def _discrete_levels(d: diffusion.GaussianDiffusion) -> tuple[Array, Array]:
  """(√ᾱ, √(1 - ᾱ)) of `d`'s steps from the last to the first, then the data's (1, 0): [n + 1]."""
  scale = jnp.append(d.sqrt_alphas_cumprod[::-1], 1.0)
  return scale, jnp.append(d.sqrt_one_minus_alphas_cumprod[::-1], 0.0)


def _solver_levels(d: diffusion.GaussianDiffusion) -> tuple[Array, Array]:
  """`_discrete_levels` with ᾱ_T = 0 taken as ZERO_SNR_ALPHA_BAR: λ_T finite."""
  zero = d.alphas_cumprod == 0
  scale = jnp.where(zero, ZERO_SNR_ALPHA_BAR**0.5, d.sqrt_alphas_cumprod)
  noise_std = jnp.where(zero, (1.0 - ZERO_SNR_ALPHA_BAR) ** 0.5, d.sqrt_one_minus_alphas_cumprod)
  return jnp.append(scale[::-1], 1.0), jnp.append(noise_std[::-1], 0.0)


def _stepwise_trajectory(d: diffusion.GaussianDiffusion, step: Step, name: str) -> Trajectory:
  """A step(x_t, t, key) -> x_{t-1} on the steps of `d` as a Trajectory: level i is step
  t = n - 1 - i, whose noise comes from fold_in(rng, t)."""
  n = d.num_timesteps
  walk_down = lambda x, i, key: step(x, n - 1 - i, key)
  return Trajectory(
    *_discrete_levels(d), memoryless(walk_down), np.arange(n - 1, -1, -1), name=name
  )


def ddpm_trajectory(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  num_steps: int | None = None,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Trajectory:
  """Ancestral sampling x_T ~ N(0, I), x_{t-1} ~ p_θ(x_{t-1} | x_t) (DDPM Algorithm 2) on `d`
  respaced to `num_steps` evenly spaced steps (Improved DDPM §4; None: all of `d`'s); level i is
  step t = n - 1 - i, whose noise comes from fold_in(rng, t); no noise at t = 0. Respacing runs on
  the host (also inside a traced function), so `d` must be concrete."""
  with jax.ensure_compile_time_eval():
    d = respaced_for(d, "ddpm", num_steps)
    step = ddpm_step(d, model_fn, clip_denoised, cond_fn)
    return _stepwise_trajectory(d, step, "ancestral sampling")


def ddim_trajectory(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  num_steps: int | None = 50,
  eta: float | Array = 0.0,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Trajectory:
  """DDIM with η = eta (`ddim_step`) on the grid space_timesteps(T, f"ddim{num_steps}") (None:
  `d` as given); level i is step t = n - 1 - i, its noise from fold_in(rng, t)."""
  with jax.ensure_compile_time_eval():
    d = respaced_for(d, "ddim", num_steps)
    return _stepwise_trajectory(
      d, ddim_step(d, model_fn, eta, clip_denoised, cond_fn), "DDIM sampling"
    )


def dpm_solver_trajectory(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  num_steps: int = 20,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Trajectory:
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the probability-flow ODE in λ = log(α/σ), α =
  √ᾱ, σ = √(1-ᾱ), with data prediction D = x̂0 and one model evaluation per step (`dpmpp_2m_update`),
  on `num_steps` grid points of `d` uniform in λ (the spacing the paper recommends; steps of equal h
  keep the extrapolation r ≈ 1); the last step lands at ᾱ = 1 (σ = 0), where x = D̃."""
  with jax.ensure_compile_time_eval():
    d = respaced_for(d, "dpm_solver", num_steps)
    levels = _solver_levels(d)
  n = d.num_timesteps

  def denoise_at(x, i):
    t_b = jnp.full((x.shape[0],), n - 1 - i, jnp.int32)
    return eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)[1]

  return multistep_trajectory(
    denoise_at, *levels, noise_index=np.arange(n), name="DPM-Solver++ sampling"
  )


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
  """Ancestral sampling (`ddpm_trajectory`) from x_T ~ N(0, I), drawn from fold_in(rng,
  PRIOR_NOISE) unless given, one `lax.scan`; no noise is added at the last step (t = 0).
  `num_steps` respaces to that many evenly spaced steps (Improved DDPM §4). `progress` logs every
  10 % of the steps."""
  trajectory = ddpm_trajectory(d, model_fn, num_steps, clip_denoised, cond_fn)
  return sample(trajectory, rng, shape, x_T, progress)


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
  """DDIM (Song et al. 2021, eq. 12; `ddim_step`) on the grid `space_timesteps(T,
  f"ddim{num_steps}")`, one `lax.scan`. η = 0 is the deterministic DDIM ODE; η = 1 is ancestral
  sampling with the β̃ variance. The last step ends at ᾱ = 1. `num_steps=None` runs on `d` as
  given."""
  trajectory = ddim_trajectory(d, model_fn, num_steps, eta, clip_denoised, cond_fn)
  return sample(trajectory, rng, shape, x_T, progress)


def ddim_step(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  eta: float | Array = 0.0,
  clip_denoised: bool = True,
  cond_fn: CondFn | None = None,
) -> Step:
  """step(x_t, t, key) -> x_{t-1} on the steps of `d` (DDIM eq. 12):

  x_{t-1} = √ᾱ_{t-1} x̂0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,
  σ_t = η √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-1})."""

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
  · z2, θ the angle between z1 and z2 (per example over all but the batch axis); for parallel (or
  opposite) latents, sin θ = 0, the formula's limit θ -> 0, (1-α) z1 + α z2."""
  axes = tuple(range(1, z1.ndim))
  cos = jnp.sum(z1 * z2, axis=axes, keepdims=True) / (
    jnp.linalg.norm(z1.reshape(z1.shape[0], -1), axis=1).reshape((-1,) + (1,) * len(axes))
    * jnp.linalg.norm(z2.reshape(z2.shape[0], -1), axis=1).reshape((-1,) + (1,) * len(axes))
  )
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  sin = jnp.sin(theta)
  parallel = sin < 1e-6
  slerped = (jnp.sin((1 - alpha) * theta) * z1 + jnp.sin(alpha * theta) * z2) / jnp.where(
    parallel, 1.0, sin
  )
  return jnp.where(parallel, (1 - alpha) * z1 + alpha * z2, slerped)


def classifier_free_guidance(
  conditional_fn: diffusion.ModelFn,
  unconditional_fn: diffusion.ModelFn,
  guidance_scale: float,
  num_channels: int,
  guidance_rescale: float = 0.0,
  rescale_space: tuple[Callable, Callable] | None = None,
) -> diffusion.ModelFn:
  """ε̃ = (1 + w) ε(x_t, y) - w ε(x_t, ∅)  (Ho & Salimans 2021, eq. 6); w = 0: the conditional model.

  Only the first `num_channels` (the mean parameterisation) are combined; a learned variance is
  taken from the conditional prediction. `guidance_rescale` φ (Lin et al. 2024, §3.4, Algorithm 2)
  pulls the guided noise prediction's per-example std back towards the conditional one's:
  ε̃ ← ε̃ (φ std(ε(x_t, y))/std(ε̃) + 1 - φ), on ε or v as the model predicts them; a model of
  another output (x0, EDM's D) gives `rescale_space` = (to(x_t, t, out), back(x_t, t, pred)),
  the maps to such a prediction and back.
  """
  to_space, from_space = rescale_space or (lambda x, t, out: out, lambda x, t, pred: pred)

  def model_fn(x_t, t):
    cond, uncond = conditional_fn(x_t, t), unconditional_fn(x_t, t)
    cond_mean = cond[..., :num_channels]
    guided = (1 + guidance_scale) * cond_mean - guidance_scale * uncond[..., :num_channels]
    if guidance_rescale:
      axes = tuple(range(1, x_t.ndim))
      cond_pred, guided_pred = to_space(x_t, t, cond_mean), to_space(x_t, t, guided)
      std_ratio = jnp.std(cond_pred, axis=axes, keepdims=True) / jnp.std(
        guided_pred, axis=axes, keepdims=True
      )
      guided_pred = guided_pred * (guidance_rescale * std_ratio + 1.0 - guidance_rescale)
      guided = from_space(x_t, t, guided_pred)
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
  alphas_cumprod = solver_alphas_cumprod(np.cumprod(1.0 - np.asarray(d.betas, np.float64)))
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
  """DPM-Solver++(2M) (`dpm_solver_trajectory`) on `num_steps` steps of `d` uniform in λ, one
  `lax.scan`."""
  trajectory = dpm_solver_trajectory(d, model_fn, num_steps, clip_denoised, cond_fn)
  return sample(trajectory, rng, shape, x_T, progress)


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


def _sigma_levels(sigmas) -> tuple[Array, Array, int]:
  """(a = 1, s = σ_i, n) of a σ grid [n + 1] (decreasing to 0; concrete or traced)."""
  sigmas = jnp.asarray(sigmas, jnp.float32)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f"sigmas must be a grid [n + 1] with n >= 1; got shape {sigmas.shape}.")
  return jnp.ones_like(sigmas), sigmas, sigmas.shape[0] - 1


def _at(sigma: Array, x: Array) -> Array:
  """σ (a scalar) as the denoiser's [B]."""
  return jnp.full((x.shape[0],), sigma, x.dtype)


def _euler_or_heun(
  denoise_fn: DenoiseFn,
  sigmas,
  heun: bool,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
) -> Trajectory:
  """dx/dσ = (x - D(x; σ))/σ by Euler or Heun's 2nd order (EDM Algorithms 1 and 2; Heun's last
  step, to σ = 0, is Euler's), with EDM's stochastic churn: x̂ = x + √(σ̂² - σ²) s_noise z,
  σ̂ = σ (1 + γ), γ = min(s_churn / n, √2 - 1) where s_tmin ≤ σ ≤ s_tmax."""
  scale, grid, n = _sigma_levels(sigmas)
  gamma_max = min(s_churn / n, 2**0.5 - 1)
  derivative = lambda x, sigma: (x - denoise_fn(x, _at(sigma, x))) / sigma

  def step(x, i, key):
    sigma, sigma_next = grid[i], grid[i + 1]
    if gamma_max > 0:
      gamma = jnp.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma_max, 0.0)
      # √(σ̂² - σ²) as σ √(γ (2 + γ)): exactly 0 at γ = 0 (XLA's fused multiply-add can make
      # σ̂² - σ² a negative round-off there)
      noise = jax.random.normal(key, x.shape, x.dtype)
      x = x + sigma * jnp.sqrt(gamma * (2 + gamma)) * s_noise * noise
      sigma = sigma * (1 + gamma)
    d, dt = derivative(x, sigma), sigma_next - sigma
    x_euler = x + d * dt
    if not heun:
      return x_euler
    corrected = lambda _: x + 0.5 * (d + derivative(x_euler, sigma_next)) * dt
    return jax.lax.cond(sigma_next > 0, corrected, lambda _: x_euler, None)

  name = f"{'heun' if heun else 'euler'} sampling"
  return Trajectory(
    scale, grid, memoryless(step), np.arange(n), standard_normal_prior(grid[0]), name
  )


def euler_trajectory(denoise_fn: DenoiseFn, sigmas, **churn) -> Trajectory:
  """Euler's method on the probability-flow ODE in σ (EDM Algorithm 1); `churn`: s_churn, s_tmin,
  s_tmax, s_noise (`_euler_or_heun`)."""
  return _euler_or_heun(denoise_fn, sigmas, False, **churn)


def heun_trajectory(denoise_fn: DenoiseFn, sigmas, **churn) -> Trajectory:
  """Heun's 2nd-order method (EDM Algorithm 2): 2n - 1 network calls; `churn` as Euler's."""
  return _euler_or_heun(denoise_fn, sigmas, True, **churn)


def euler_ancestral_trajectory(denoise_fn: DenoiseFn, sigmas, s_noise: float = 1.0) -> Trajectory:
  """An Euler step to σ_down, then noise σ_up s_noise z (η = 1; `_ancestral_step`)."""
  scale, grid, n = _sigma_levels(sigmas)

  def step(x, i, key):
    sigma, sigma_next = grid[i], grid[i + 1]
    denoised = denoise_fn(x, _at(sigma, x))
    sigma_down, sigma_up = _ancestral_step(sigma, sigma_next)
    x = x + (x - denoised) / sigma * (sigma_down - sigma)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + jnp.where(sigma_next > 0, sigma_up * s_noise, 0.0) * noise

  prior = standard_normal_prior(grid[0])
  return Trajectory(scale, grid, memoryless(step), np.arange(n), prior, "euler_ancestral sampling")


def _sigma_multistep(denoise_fn: DenoiseFn, sigmas, s_noise: float | None, name: str):
  """`multistep_trajectory` on a σ grid (α = 1, λ = -log σ), step i's noise from fold_in(rng, i)."""
  scale, grid, n = _sigma_levels(sigmas)
  denoise_at = lambda x, i: denoise_fn(x, _at(grid[i], x))
  prior = standard_normal_prior(grid[0])
  return multistep_trajectory(
    denoise_at, scale, grid, s_noise, noise_index=np.arange(n), prior=prior, name=name
  )


def dpmpp_2m_trajectory(denoise_fn: DenoiseFn, sigmas) -> Trajectory:
  """DPM-Solver++(2M) in t = -log σ (Lu et al. 2022; α = 1)."""
  return _sigma_multistep(denoise_fn, sigmas, None, "dpmpp_2m sampling")


def dpmpp_2m_sde_trajectory(denoise_fn: DenoiseFn, sigmas, s_noise: float = 1.0) -> Trajectory:
  """DPM-Solver++(2M) SDE, midpoint correction, η = 1 (k-diffusion's)."""
  return _sigma_multistep(denoise_fn, sigmas, s_noise, "dpmpp_2m_sde sampling")


# σ-space solver name -> (denoise_fn, sigmas, **options) -> its Trajectory; options: the churn
# (s_churn, s_tmin, s_tmax, s_noise) of euler and heun, s_noise of the stochastic ones
SIGMA_SOLVERS = {
  "euler": euler_trajectory,
  "heun": heun_trajectory,
  "dpmpp_2m": dpmpp_2m_trajectory,
  "euler_ancestral": euler_ancestral_trajectory,
  "dpmpp_2m_sde": dpmpp_2m_sde_trajectory,
}
STOCHASTIC_SIGMA_SOLVERS = ("euler_ancestral", "dpmpp_2m_sde")
CHURN_SIGMA_SOLVERS = ("euler", "heun")


def sigma_solver_options(
  solver: str,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
) -> dict:
  """Of EDM's churn and noise options, those `solver` takes: all four (euler, heun), s_noise (the
  stochastic solvers), none (dpmpp_2m)."""
  if solver in CHURN_SIGMA_SOLVERS:
    return dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
  return {"s_noise": s_noise} if solver in STOCHASTIC_SIGMA_SOLVERS else {}


def sigma_trajectory(denoise_fn: DenoiseFn, sigmas, solver: str, **options) -> Trajectory:
  """The σ-space solver `solver` (`SIGMA_SOLVERS`) on the grid `sigmas` [n + 1]: a = 1, s = σ_i."""
  if solver not in SIGMA_SOLVERS:
    raise ValueError(f"Unknown σ-space solver {solver!r}; valid: {', '.join(SIGMA_SOLVERS)}.")
  return SIGMA_SOLVERS[solver](denoise_fn, sigmas, **options)


def sigma_ode_codec(denoise_fn: DenoiseFn, sigmas) -> tuple[Callable, Callable]:
  """The probability-flow ODE dx/dσ = (x - D(x; σ))/σ as a deterministic encoder, by Heun's method
  on the grid `sigmas` [n] (decreasing, all > 0; EDM's without its final 0): (encode(x0) -> z,
  decode(z) -> x0) with x0 taken as x at σ_{n-1} (≈ the data for a small σ_min) and z = x(σ_0)/σ_0,
  of unit scale (what `slerp` interpolates), each one `lax.scan`."""
  sigmas = jnp.asarray(sigmas, jnp.float32)

  def encode(x0):
    return sigma_sample(denoise_fn, x0, sigmas[::-1], "heun") / sigmas[0]

  def decode(z):
    return sigma_sample(denoise_fn, sigmas[0] * z, sigmas, "heun")

  return encode, decode


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

    euler, heun      Euler or Heun's 2nd order with EDM's churn (`euler_trajectory`)
    dpmpp_2m         DPM-Solver++(2M) in t = -log σ (Lu et al. 2022)
    euler_ancestral  an Euler step to σ_down, then noise σ_up z
    dpmpp_2m_sde     DPM-Solver++(2M) SDE, midpoint correction, η = 1

  `rng` draws step i's noise z from fold_in(rng, i): needed by the stochastic solvers and churn.
  Network calls: n (euler, dpmpp_*, euler_ancestral), 2n - 1 (heun to σ_n = 0)."""
  if solver not in SIGMA_SOLVERS:
    raise ValueError(f"Unknown σ-space solver {solver!r}; valid: {', '.join(SIGMA_SOLVERS)}.")
  stochastic = solver in STOCHASTIC_SIGMA_SOLVERS or s_churn > 0
  if stochastic and rng is None:
    raise ValueError(f"solver={solver!r} with s_churn={s_churn} draws noise: pass rng.")
  if s_churn > 0 and solver not in CHURN_SIGMA_SOLVERS:
    raise ValueError(f"s_churn is for the 'euler' and 'heun' solvers, not {solver!r}.")
  check_batch(x=x)
  options = sigma_solver_options(solver, s_churn, s_tmin, s_tmax, s_noise)
  trajectory = sigma_trajectory(denoise_fn, sigmas, solver, **options)
  rng = jax.random.key(0) if rng is None else rng  # deterministic: no noise is drawn
  return run(trajectory, rng, x, progress=trajectory.name if progress else None)


def sigma_to_t(log_sigmas: Array, sigma: Array) -> Array:
  """The fractional timestep of σ [B] on a discrete model's increasing log σ_t grid [T]: linear in
  log σ between the neighbouring integer steps, clamped to [0, T - 1] (k-diffusion's
  DiscreteSchedule.sigma_to_t)."""
  log_sigma = jnp.log(sigma)
  low = jnp.clip(jnp.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
  w = jnp.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
  return (1.0 - w) * low + w * (low + 1)


def discrete_sigmas(d: diffusion.GaussianDiffusion) -> Array:
  """σ_t = √((1 - ᾱ_t)/ᾱ_t) of each step [T]: x_t/√ᾱ_t = x0 + σ_t ε (σ_T = 4096 where ᾱ_T = 0:
  `solver_alphas_cumprod`)."""
  sigma_zero_snr = ((1.0 - ZERO_SNR_ALPHA_BAR) / ZERO_SNR_ALPHA_BAR) ** 0.5
  return jnp.where(d.alphas_cumprod == 0, sigma_zero_snr, d.sqrt_recipm1_alphas_cumprod)


def discrete_denoiser(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  clip_denoised: bool = False,
  cond_fn: CondFn | None = None,
) -> DenoiseFn:
  """D(x; σ) of a model trained on the discrete diffusion `d` (not respaced): x = x_t/√ᾱ_t, so the
  model sees x/√(1 + σ²) at t = sigma_to_t(σ) (fractional), and its ε / x0 / v prediction
  (d.mean_type; extra variance channels ignored) gives x̂0 (k-diffusion's DiscreteEpsDDPMDenoiser
  and its v variant); `clip_denoised` clips x̂0 to [-1, 1]. Classifier guidance `cond_fn(x_t, t)`
  = s ∇_{x_t} log p(y | x_t) shifts it as the score: D + σ² ∇_x log p(y | x) = D + σ² √ᾱ cond_fn
  (after the clip, as ADM's DDIM shifts ε after clipping x̂0)."""
  log_sigmas = jnp.log(discrete_sigmas(d))

  def denoise(x, sigma):
    c = (1.0 / jnp.sqrt(sigma**2 + 1.0)).reshape((-1,) + (1,) * (x.ndim - 1))  # √ᾱ
    s = sigma.reshape(c.shape)
    t = sigma_to_t(log_sigmas, sigma)
    out = model_fn(x * c, t)[..., : x.shape[-1]]
    if d.mean_type == "eps":  # x0 = (x_t - √(1-ᾱ) ε)/√ᾱ = x - σ ε
      x0 = x - s * out
    elif d.mean_type == "x0":
      x0 = out
    else:  # v = √ᾱ ε - √(1-ᾱ) x0: x0 = √ᾱ x_t - √(1-ᾱ) v
      x0 = c**2 * x - s * c * out
    x0 = jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0
    if cond_fn is not None:
      x0 = x0 + s**2 * c * cond_fn(x * c, t)
    return x0

  return denoise
