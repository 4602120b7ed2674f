"""β schedules of the forward process, in numpy float64.

Every schedule returns `betas` of shape [T] with 0 < β_t < 1 (β_T = 1 once rescaled to zero
terminal SNR by `rescale_zero_terminal_snr`). They are computed in float64 here and
cast to float32 exactly once, when a `diffusion.GaussianDiffusion` is built from them.

  linear     β from 1e-4 to 0.02, both scaled by 1000/T so that any T has the same ᾱ_T (DDPM §4;
             Improved DDPM §3.2 for the scaling).
  cosine     ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, β capped at 0.999
             (Improved DDPM eq. 17).
  quadratic  √β linear between √β_start and √β_end (the DDPM code's "quad").
  sigmoid    β_start + (β_end - β_start) · sigmoid(linspace(-6, 6, T)) (the DDPM code's "sigmoid").
  constant   β_end at every step.

The keyword arguments `beta_start`/`beta_end` of linear, quadratic, sigmoid and constant default to
the scaled DDPM values 1e-4·1000/T and 0.02·1000/T.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def _scaled_range(
  num_timesteps: int, beta_start: float | None, beta_end: float | None
) -> tuple[float, float]:
  scale = 1000.0 / num_timesteps
  start = scale * 1e-4 if beta_start is None else beta_start
  end = scale * 0.02 if beta_end is None else beta_end
  return start, end


def linear(
  num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
  start, end = _scaled_range(num_timesteps, beta_start, beta_end)
  return np.linspace(start, end, num_timesteps, dtype=np.float64)


def quadratic(
  num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
  start, end = _scaled_range(num_timesteps, beta_start, beta_end)
  return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def sigmoid(
  num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
  start, end = _scaled_range(num_timesteps, beta_start, beta_end)
  s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)))
  return start + (end - start) * s


def constant(num_timesteps: int, beta_end: float | None = None) -> np.ndarray:
  _, end = _scaled_range(num_timesteps, None, beta_end)
  return np.full(num_timesteps, end, dtype=np.float64)


def betas_for_alpha_bar(
  num_timesteps: int, alpha_bar: Callable[[np.ndarray], np.ndarray], max_beta: float = 0.999
) -> np.ndarray:
  """β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta) for a continuous ᾱ(τ), τ ∈ [0, 1]."""
  tau = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  a = alpha_bar(tau)
  return np.minimum(1.0 - a[1:] / a[:-1], max_beta)


def cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  # Improved DDPM eq. 17; f(0) cancels in the ratio ᾱ(t+1)/ᾱ(t).
  return betas_for_alpha_bar(
    num_timesteps, lambda tau: np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2, max_beta
  )


SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
  "linear": linear,
  "cosine": cosine,
  "quadratic": quadratic,
  "sigmoid": sigmoid,
  "constant": constant,
}


def check_betas(betas: np.ndarray) -> np.ndarray:
  """Returns `betas` as float64 [T]; ValueError unless 1-D, non-empty and inside (0, 1), the last
  also 1 (zero terminal SNR: ᾱ_T = 0)."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
  inside = (betas > 0) & (betas < 1)
  inside[-1] |= betas[-1] == 1.0
  if not np.all(inside):
    bad = np.flatnonzero(~inside)
    raise ValueError(
      f"betas must lie in (0, 1) (the last may be 1); {bad.size} entries do not, e.g. "
      f"betas[{bad[0]}] = {betas[bad[0]]}."
    )
  return betas


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """The schedule with zero terminal SNR (Lin et al. 2024, Algorithm 1): √ᾱ shifted to end at 0
  and scaled to keep √ᾱ_1, √ᾱ'_t = (√ᾱ_t - √ᾱ_T) √ᾱ_1 / (√ᾱ_1 - √ᾱ_T); so ᾱ'_T = 0 and β'_T = 1."""
  sqrt_alphas_cumprod = np.sqrt(np.cumprod(1.0 - check_betas(betas)))
  first, last = sqrt_alphas_cumprod[0], sqrt_alphas_cumprod[-1]
  alphas_cumprod = ((sqrt_alphas_cumprod - last) * first / (first - last)) ** 2
  alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
  return 1.0 - alphas


def get_beta_schedule(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """β schedule `name` with `num_timesteps` steps: np.float64 [T]."""
  if name not in SCHEDULES:
    raise ValueError(f"Unknown beta schedule {name!r}; known: {', '.join(sorted(SCHEDULES))}.")
  if (
    isinstance(num_timesteps, bool)
    or not isinstance(num_timesteps, (int, np.integer))
    or num_timesteps <= 0
  ):
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")
  return check_betas(SCHEDULES[name](int(num_timesteps), **kwargs))
