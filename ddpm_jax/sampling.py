"""Samplers of the reverse process and the timestep respacing they run on.

`space_timesteps` picks the steps to keep; `diffusion.respace` builds the `GaussianDiffusion` on them.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion

Array = jax.Array


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
  """The timesteps to keep from range(num_timesteps), sorted (Improved DDPM §4, its `space_timesteps`).

  section_counts:
    "ddimN"        the DDIM grid 0, s, 2s, … with the integer stride s that gives exactly N steps;
    [n1, n2, …]    split [0, T) into equal sections and take n_i evenly spaced steps (ends included) in
                   section i; also accepted as the string "n1,n2,…".
  """
  if num_timesteps <= 0:
    raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f"No integer stride gives exactly {desired} DDIM steps out of {num_timesteps}.")
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
    for _ in range(count):  # accumulated, as the reference code does, so rounding ties agree with it
      steps.add(start + round(position))
      position += stride
    start += size
  return sorted(steps)


# fold_in index of x_T's noise: outside the range of step indices, which key the per-step noise.
_PRIOR_NOISE = 2**31 - 1


def _initial_noise(rng: Array, shape, x_T: Array | None) -> Array:
  if x_T is None:
    if shape is None:
      raise ValueError("Give either `shape` or `x_T`.")
    return jax.random.normal(jax.random.fold_in(rng, _PRIOR_NOISE), shape)
  return x_T


def ddpm_sample(d: diffusion.GaussianDiffusion, model_fn: diffusion.ModelFn, rng: Array, shape=None,
                x_T: Array | None = None, num_steps: int | None = None, clip_denoised: bool = True) -> Array:
  """Ancestral sampling x_T ~ N(0, I), x_{t-1} ~ p_θ(x_{t-1} | x_t) (DDPM Algorithm 2), one `lax.scan`.

  No noise is added at the last step (t = 0). `num_steps` respaces to that many evenly spaced steps
  (Improved DDPM §4); respacing runs on the host, so `d` must be concrete (closed over, not traced).
  Noise for step t comes from `fold_in(rng, t)`.
  """
  if num_steps is not None:
    d = diffusion.respace(d, space_timesteps(d.num_timesteps, [num_steps]))
  x = _initial_noise(rng, shape, x_T)
  batch = x.shape[0]

  def step(x, t):
    t_b = jnp.full((batch,), t, dtype=jnp.int32)
    out = diffusion.p_mean_variance(d, model_fn(x, d.timestep_map[t_b]), x, t_b, clip_denoised)
    noise = jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype)
    return out["mean"] + jnp.where(t > 0, jnp.exp(0.5 * out["log_variance"]), 0.0) * noise, None

  x, _ = jax.lax.scan(step, x, jnp.arange(d.num_timesteps - 1, -1, -1))
  return x
