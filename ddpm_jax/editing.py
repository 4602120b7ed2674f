"""Controllable generation with an unconditional model: inpainting (with RePaint's resampling),
colorization and SDEdit image-to-image, on any sampler that walks down a grid of noise levels (a
`sampling.Trajectory`: Gaussian diffusion's ancestral, DDIM and DPM-Solver++ steps, the σ-space
solvers, score-SDE predictor-corrector steps and VDM's ancestral steps), run by `sampling.run`:

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

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, sampling

Array = jax.Array
TASKS = ("inpaint", "colorize", "sdedit")
MASK_REGIONS = ("center", "right", "bottom")  # the unknown region of `region_mask`


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


def mask_observation(mask: Array) -> sampling.Observe:
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


def _walk(trajectory: sampling.Trajectory, rng: Array, x_start: Array, start: int = 0, **options):
  """`sampling.run` from x at level `start` drawn as a x_start + s z."""
  scale, noise_std = (jnp.asarray(a, jnp.float32) for a in (trajectory.scale, trajectory.noise_std))
  z = jax.random.normal(jax.random.fold_in(rng, sampling.PRIOR_NOISE), x_start.shape, x_start.dtype)
  x = scale[start] * x_start + noise_std[start] * z
  return sampling.run(trajectory, rng, x, start, **options)


def inpaint_along(
  trajectory: sampling.Trajectory,
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
  observe = mask_observation(mask)
  options = dict(resample=resample, jump=jump, progress=progress)
  return _walk(trajectory, rng, jnp.zeros_like(x_known), known=x_known, observe=observe, **options)


def colorize_along(
  trajectory: sampling.Trajectory,
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
  options = dict(resample=resample, jump=jump, progress=progress)
  return _walk(
    trajectory, rng, jnp.zeros_like(known), known=known, observe=grey_observation, **options
  )


def sdedit_start(num_steps: int, strength: float) -> int:
  """The level SDEdit starts from: n - round(strength · n) (strength 1: the sampler's start)."""
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must lie in (0, 1]; got {strength}.")
  return num_steps - int(round(strength * num_steps))


def sdedit_along(
  trajectory: sampling.Trajectory,
  rng: Array,
  x_input: Array,
  strength: float,
  progress: str | None = None,
) -> Array:
  """`sdedit` on any sampler's trajectory."""
  check_images("x_input", x_input)
  start = sdedit_start(trajectory.num_steps, strength)
  return _walk(trajectory, rng, x_input, start, progress=progress)


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
  trajectory = sampling.ddpm_trajectory(d, model_fn, num_steps)
  return inpaint_along(trajectory, rng, x_known, mask, resample, jump)


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
  return sdedit_along(sampling.ddpm_trajectory(d, model_fn, num_steps), rng, x_input, strength)


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
  trajectory = sampling.ddpm_trajectory(d, model_fn, num_steps)
  return colorize_along(trajectory, rng, gray, 3, resample, jump)
