"""Controllable generation with an unconditional model: inpainting (with RePaint's resampling),
colorization and SDEdit image-to-image, for any sampler that walks down a grid of noise levels.

A sampler is a `Trajectory`: levels x_i = a_i x0 + s_i ε, i = 0 (where sampling starts) … n (the
data: a_n = 1, s_n = 0), and the step x_i -> x_{i+1}, which may carry a `History` (the multistep
DPM-Solver++ ones: the last data prediction). Gaussian diffusion's ancestral, DDIM and DPM-Solver++
steps, the σ-space solvers, score-SDE predictor-corrector steps and VDM's ancestral steps are
trajectories (`gaussian_trajectory`, `dpm_solver_trajectory`, `sigma_trajectory`, `sde_trajectory`,
`vdm_trajectory`), so each task runs on each of them:

  inpainting    after every step the known part P x (P an orthogonal projector: the mask, or the
                grey component of colour images) is replaced by a fresh draw from
                q(x_{i+1} | x_known) (Song et al. 2021 Appendix I; Lugmayr et al. 2022, Algorithm
                1), and every `jump` levels the sample is noised back `jump` levels `resample` - 1
                times (RePaint); a multistep solver's last data prediction gets the known part
                x_known (its exact value at the data level) and is dropped by a noising back
  colorization  inpainting of the grey component x̄ = mean over channels (score_sde's decoupling: an
                orthogonal change of colour basis whose first axis is grey)
  SDEdit        x_input noised to level i0 = n - round(strength · n), then denoised (Meng et al.
                2022)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, sampling, sde, vdm

Array = jax.Array
# (x, the known part's draw at the same level) -> x with its known part replaced
Observe = Callable[[Array, Array], Array]
TASKS = ("inpaint", "colorize", "sdedit")
MASK_REGIONS = ("center", "right", "bottom")  # the unknown region of `region_mask`


class History(NamedTuple):
  """What a multistep step carries to the next: its data prediction D and its step h in λ (h = 0:
  none, the next step is first order)."""

  denoised: Array
  h: Array


# (x_i, history, i, key) -> (x_{i+1}, history)
TrajectoryStep = Callable[[Array, History, Array, Array], tuple[Array, History]]


class Trajectory(NamedTuple):
  """A sampler as n steps between the noise levels x_i = a_i x0 + s_i ε."""

  scale: np.ndarray | Array  # a_i [n + 1], a_n = 1
  noise_std: np.ndarray | Array  # s_i [n + 1], s_n = 0
  step: TrajectoryStep

  @property
  def num_steps(self) -> int:
    return len(self.scale) - 1


def _levels(scale, noise_std) -> tuple[np.ndarray, np.ndarray]:
  """The levels with the data's (a = 1, s = 0) appended, float64."""
  return np.append(np.asarray(scale, np.float64), 1.0), np.append(np.asarray(noise_std), 0.0)


def memoryless(step: sampling.Step) -> TrajectoryStep:
  """A step of the current x only, (x_i, i, key) -> x_{i+1}, as a `TrajectoryStep`."""
  return lambda x, history, i, key: (step(x, i, key), history)


def multistep_trajectory(
  denoise_at: Callable[[Array, Array], Array], scale, noise_std, stochastic: bool = False
) -> Trajectory:
  """DPM-Solver++(2M) (`sampling.dpmpp_2m_update`; its SDE variant if `stochastic`) on the levels
  (scale, noise_std) [n + 1] (concrete, s_n = 0), `denoise_at(x, i)` the data prediction at
  level i."""
  levels = [jnp.asarray(a, jnp.float32) for a in (scale, noise_std)]

  def step(x, history, i, key):
    denoised = denoise_at(x, i)
    noise = jax.random.normal(key, x.shape, x.dtype) if stochastic else None
    a, s = levels
    x, h = sampling.dpmpp_2m_update(
      x, denoised, history.denoised, history.h, a[i], s[i], a[i + 1], s[i + 1], noise
    )
    return x, History(denoised, h)

  return Trajectory(np.asarray(scale), np.asarray(noise_std), step)


def gaussian_trajectory(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  num_steps: int | None = None,
  eta: float | Array | None = None,
  clip_denoised: bool = True,
  cond_fn: sampling.CondFn | None = None,
) -> Trajectory:
  """Ancestral sampling (eta None: `ddpm_sample`'s respacing to `num_steps`) or DDIM with η = eta
  (`ddim_sample`'s grid) on `d`: level i is step t = n - 1 - i, a = √ᾱ_t, s = √(1 - ᾱ_t)."""
  with jax.ensure_compile_time_eval():  # concrete levels, also when built inside a traced function
    return _gaussian_trajectory(d, model_fn, num_steps, eta, clip_denoised, cond_fn)


def _gaussian_trajectory(d, model_fn, num_steps, eta, clip_denoised, cond_fn) -> Trajectory:
  d = sampling.respaced_for(d, "ddpm" if eta is None else "ddim", num_steps)
  if eta is None:
    step = sampling.ddpm_step(d, model_fn, clip_denoised, cond_fn)
  else:
    step = sampling.ddim_step(d, model_fn, eta, clip_denoised, cond_fn)
  alphas_cumprod = np.cumprod(1.0 - np.asarray(d.betas, np.float64))[::-1]
  n = d.num_timesteps
  return Trajectory(
    *_levels(np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod)),
    memoryless(lambda x, i, key: step(x, n - 1 - i, key)),
  )


def dpm_solver_trajectory(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  num_steps: int = 20,
  clip_denoised: bool = True,
  cond_fn: sampling.CondFn | None = None,
) -> Trajectory:
  """`sampling.dpm_solver_sample`: DPM-Solver++(2M) on `num_steps` steps of `d` uniform in λ."""
  with jax.ensure_compile_time_eval():
    d = sampling.respaced_for(d, "dpm_solver", num_steps)
    alphas_cumprod = np.cumprod(1.0 - np.asarray(d.betas, np.float64))[::-1]
  n = d.num_timesteps

  def denoise_at(x, i):
    t_b = jnp.full((x.shape[0],), n - 1 - i, jnp.int32)
    return sampling.eps_and_x0(d, model_fn, x, t_b, clip_denoised, cond_fn)[1]

  levels = _levels(np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod))
  return multistep_trajectory(denoise_at, *levels)


def sigma_trajectory(
  denoise_fn: sampling.DenoiseFn, sigmas, solver: str = "euler", **churn
) -> Trajectory:
  """A σ-space solver (`sampling.SIGMA_SOLVERS`) on the grid `sigmas` [n + 1] (decreasing to 0,
  concrete): a = 1, s = σ_i. `churn`: `sampling.sigma_step`'s γ_max, s_tmin, … (euler, heun)."""
  if solver not in sampling.SIGMA_SOLVERS:
    raise ValueError(
      f"Unknown σ-space solver {solver!r}; valid: {', '.join(sampling.SIGMA_SOLVERS)}."
    )
  with jax.ensure_compile_time_eval():
    sigmas = np.asarray(sigmas, np.float64)
  grid = jnp.asarray(sigmas, jnp.float32)
  denoise_at = lambda x, i: denoise_fn(x, jnp.full((x.shape[0],), grid[i], x.dtype))
  if solver not in sampling.ONE_STEP_SIGMA_SOLVERS:
    return multistep_trajectory(denoise_at, np.ones_like(sigmas), sigmas, solver == "dpmpp_2m_sde")

  def step(x, i, key):
    return sampling.sigma_step(denoise_fn, x, grid[i], grid[i + 1], solver, key, **churn)[0]

  return Trajectory(np.ones_like(sigmas), sigmas, memoryless(step))


def sde_trajectory(
  s: sde.SDE,
  score_fn: sde.ScoreFn,
  predictor: str = "reverse_diffusion",
  corrector: str = "langevin",
  snr: float = 0.16,
  n_corrector: int = 1,
  eps: float = 1e-3,
) -> Trajectory:
  """Predictor-corrector sampling (`sde.pc_sample`) on its grid t_i from T to eps: a = m(t_i),
  s = std(t_i); the last step returns the predictor's mean (no noise), as pc_sample does."""
  with jax.ensure_compile_time_eval():
    timesteps = np.asarray(sde.pc_timesteps(s, eps), np.float64)
    mean, std = (np.asarray(a) for a in s.marginal_prob(np.ones(timesteps.shape), timesteps))
  pc = sde.pc_step(s, score_fn, predictor, corrector, snr, n_corrector)
  grid = jnp.asarray(timesteps, jnp.float32)

  def step(x, i, key):
    x, x_mean = pc(x, grid[i], key)
    return jnp.where(i == len(timesteps) - 1, x_mean, x)

  return Trajectory(*_levels(mean, std), memoryless(step))


def vdm_trajectory(schedule: dict[str, Array], eps_fn: vdm.EpsFn, num_steps: int) -> Trajectory:
  """`vdm.sample`: ancestral steps t = k/T -> (k-1)/T from t = 1 (a = α_t, s = σ_t), the last one
  ending in the mode of p(x | z_0). `schedule` may be traced (a learned γ)."""
  t = jnp.arange(num_steps, 0, -1) / num_steps
  alpha, sigma = vdm.alpha_sigma(vdm.gamma(schedule, t))

  def step(z, i, key):
    t_i = jnp.full((z.shape[0],), (num_steps - i) / num_steps)
    noise = jax.random.normal(key, z.shape, z.dtype)
    z = vdm.ancestral_step(schedule, eps_fn, z, t_i, t_i - 1.0 / num_steps, noise)
    return jax.lax.cond(i == num_steps - 1, lambda z: vdm.decoded_mode(schedule, z), lambda z: z, z)

  return Trajectory(jnp.append(alpha, 1.0), jnp.append(sigma, 0.0), memoryless(step))


def repaint_schedule(num_steps: int, resample: int = 1, jump: int = 1, start: int = 0):
  """RePaint's walk over the levels start … num_steps (Lugmayr et al. 2022, get_schedule_jump):
  down one level at a time, and on reaching a level num_steps - 1 - k·jump ≥ jump, back up `jump`
  levels, `resample` - 1 times each. -> (from, to) levels [K], to > from a step of the sampler,
  to < from a forward noising."""
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


def run(
  trajectory: Trajectory,
  rng: Array,
  x_start: Array,
  start: int = 0,
  known: Array | None = None,
  observe: Observe | None = None,
  resample: int = 1,
  jump: int = 1,
  progress: str | None = None,
) -> Array:
  """x at level `start` drawn as a x_start + s z, then RePaint's walk to the data (one `lax.scan`),
  with `observe(x, a x_known + s z)` after every step where `known` is given. `progress` (a name)
  logs every 10 % of the walk."""
  scale, noise_std = (jnp.asarray(a, jnp.float32) for a in (trajectory.scale, trajectory.noise_std))
  pairs = repaint_schedule(trajectory.num_steps, resample, jump, start)
  noise = lambda key: jax.random.normal(key, x_start.shape, x_start.dtype)
  x = scale[start] * x_start + noise_std[start] * noise(
    jax.random.fold_in(rng, sampling.PRIOR_NOISE)
  )
  report = sampling.progress_reporter(progress, len(pairs)) if progress else None

  def walk(carry, k_and_pair):
    k, (i, j) = k_and_pair
    step_key, known_key = jax.random.split(jax.random.fold_in(rng, k))

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

    carry = jax.lax.cond(j > i, denoise, renoise, carry)
    if report is not None:
      jax.debug.callback(report, k + 1)
    return carry, None

  history = History(jnp.zeros_like(x), jnp.zeros((), x.dtype))  # no previous step
  steps = (jnp.arange(len(pairs)), jnp.asarray(pairs))
  return jax.lax.scan(walk, (x, history), steps)[0][0]


def region_mask(name: str, size: int) -> np.ndarray:
  """1 where known [1, S, S, 1], `name`'s region unknown: the middle half square ("center"), the
  right or the bottom half."""
  mask = np.ones((1, size, size, 1), np.float32)
  lo, hi = size // 4, size - size // 4
  region = {
    "center": (slice(lo, hi), slice(lo, hi)),
    "right": (slice(None), slice(size // 2, None)),
    "bottom": (slice(size // 2, None), slice(None)),
  }[name]
  mask[(0, *region, 0)] = 0.0
  return mask


def mask_observation(mask: Array) -> Observe:
  """Inpainting's replacement: mask · known + (1 - mask) · x (mask 1 where known; exact there)."""
  return lambda x, known: mask * known + (1.0 - mask) * x


def grey_observation(x: Array, known: Array) -> Array:
  """Colorization's replacement of the grey component: x + (mean_c(known) - mean_c(x)), the
  orthogonal projection onto (1, …, 1)/√C per pixel."""
  return x + jnp.mean(known - x, axis=-1, keepdims=True)


def check_images(name: str, x: Array, channels: int | None = None) -> None:
  if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
    want = f"[B, H, W, {channels}]" if channels else "[B, H, W, C]"
    raise ValueError(f"{name} must be NHWC images {want}; got shape {x.shape}.")


def inpaint_along(
  trajectory: Trajectory,
  rng: Array,
  x_known: Array,
  mask: Array,
  resample: int = 1,
  jump: int = 1,
  progress: str | None = None,
) -> Array:
  """`inpaint` on any sampler's trajectory."""
  check_images("x_known", x_known)
  mask = jnp.broadcast_to(jnp.asarray(mask, x_known.dtype), x_known.shape)
  return run(
    trajectory,
    rng,
    jnp.zeros_like(x_known),
    known=x_known,
    observe=mask_observation(mask),
    resample=resample,
    jump=jump,
    progress=progress,
  )


def colorize_along(
  trajectory: Trajectory,
  rng: Array,
  gray: Array,
  channels: int = 3,
  resample: int = 1,
  jump: int = 1,
  progress: str | None = None,
) -> Array:
  """`colorize` on any sampler's trajectory: images [B, H, W, channels] whose channel mean is
  `gray` [B, H, W, 1]."""
  check_images("gray", gray, 1)
  known = jnp.broadcast_to(gray, gray.shape[:-1] + (channels,))
  return run(
    trajectory,
    rng,
    jnp.zeros_like(known),
    known=known,
    observe=grey_observation,
    resample=resample,
    jump=jump,
    progress=progress,
  )


def sdedit_start(num_steps: int, strength: float) -> int:
  """The level SDEdit starts from: n - round(strength · n) (strength 1: the sampler's start)."""
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must lie in (0, 1]; got {strength}.")
  return num_steps - int(round(strength * num_steps))


def sdedit_along(
  trajectory: Trajectory,
  rng: Array,
  x_input: Array,
  strength: float,
  progress: str | None = None,
) -> Array:
  """`sdedit` on any sampler's trajectory."""
  check_images("x_input", x_input)
  start = sdedit_start(trajectory.num_steps, strength)
  return run(trajectory, rng, x_input, start=start, progress=progress)


def inpaint(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  x_known: Array,
  mask: Array,
  num_steps: int | None = None,
  resample: int = 1,
  jump: int = 1,
) -> Array:
  """Inpainting by ancestral sampling on `d` (respaced to `num_steps`): x_known NHWC in [-1, 1],
  mask 1 where known (broadcast to x_known); the result equals x_known where mask == 1."""
  return inpaint_along(
    gaussian_trajectory(d, model_fn, num_steps), rng, x_known, mask, resample, jump
  )


def sdedit(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  x_input: Array,
  strength: float,
  num_steps: int | None = None,
) -> Array:
  """SDEdit by ancestral sampling on `d` (respaced to `num_steps`) from x_input noised to
  t0 = strength · T, strength in (0, 1]."""
  return sdedit_along(gaussian_trajectory(d, model_fn, num_steps), rng, x_input, strength)


def colorize(
  d: diffusion.GaussianDiffusion,
  model_fn: diffusion.ModelFn,
  rng: Array,
  gray: Array,
  num_steps: int | None = None,
  resample: int = 1,
  jump: int = 1,
) -> Array:
  """Colour images [B, H, W, 3] whose channel mean is `gray` [B, H, W, 1] in [-1, 1], by ancestral
  sampling on `d` (respaced to `num_steps`)."""
  return colorize_along(gaussian_trajectory(d, model_fn, num_steps), rng, gray, 3, resample, jump)
