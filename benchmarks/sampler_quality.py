"""Sample quality against model evaluations on a 2-D Gaussian mixture whose ε is known exactly.

For data x0 ~ Σ_k π_k N(m_k, s² I), x_t | k ~ N(√ᾱ m_k, (ᾱ s² + 1 - ᾱ) I), so
E[ε | x_t] = Σ_k r_k(x_t) √(1-ᾱ) (x_t - √ᾱ m_k) / (ᾱ s² + 1 - ᾱ) with responsibilities r_k: the
samplers run with the exact model, and what remains is their own discretisation error. Prints the
sliced Wasserstein-1 distance between 20,000 samples and 20,000 draws of the mixture for each
sampler (the timestep samplers, then the σ-space solvers on EDM's grid through the discrete
denoiser) and number of model evaluations (NFE); the last row is two independent draws of the
mixture (the distance's noise floor).

  python -m benchmarks.sampler_quality
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import machine_description
from configs import default
from ddpm_jax import diffusion, sampling, schedules
from ddpm_jax.families import gaussian

MEANS = np.array([[-1.2, -0.6], [0.0, 0.9], [1.1, -0.5]], np.float32)
WEIGHTS = np.array([0.5, 0.3, 0.2], np.float32)
STD = 0.15
NUM_SAMPLES = 20_000


def mixture_eps_fn(d: diffusion.GaussianDiffusion):
  """The exact ε(x_t, t) [B, 1, 1, 2]; at a fractional t (the σ-space solvers' discrete denoiser)
  with ᾱ = 1/(1 + σ²), log σ linear between integer steps (as sampling.sigma_to_t)."""
  means, log_weights = jnp.asarray(MEANS), jnp.log(jnp.asarray(WEIGHTS))
  log_sigmas = jnp.log(sampling.discrete_sigmas(d))

  def model_fn(x_t, t):  # x_t [B, 1, 1, 2]
    x = x_t.reshape(-1, 2)
    low = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, d.num_timesteps - 2)
    w = t - low
    sigma = jnp.exp((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1])
    a = (1 / (1 + sigma**2))[:, None]
    var = a * STD**2 + 1 - a  # [B, 1]
    diff = x[:, None, :] - jnp.sqrt(a)[:, None] * means[None]  # [B, K, 2]
    # [B, K], up to a constant
    log_r = log_weights - 0.5 * jnp.sum(diff**2, -1) / var - jnp.log(var)
    r = jax.nn.softmax(log_r, axis=-1)
    eps = jnp.sqrt(1 - a) * jnp.sum(r[..., None] * diff, axis=1) / var
    return eps.reshape(x_t.shape)

  return model_fn


def mixture_draws(rng: np.random.Generator, n: int) -> np.ndarray:
  k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
  return MEANS[k] + STD * rng.normal(size=(n, 2))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_projections: int = 256) -> float:
  """Mean over random directions of the 1-D Wasserstein-1 distance of the projections (sorted
  matching)."""
  angles = np.random.default_rng(0).uniform(0, np.pi, num_projections)
  directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  pa, pb = np.sort(a @ directions.T, axis=0), np.sort(b @ directions.T, axis=0)
  return float(np.mean(np.abs(pa - pb)))


def main():
  print(f"machine: {machine_description()}", flush=True)
  d = diffusion.GaussianDiffusion.from_betas(schedules.get_beta_schedule("linear", 1000))
  model_fn = mixture_eps_fn(d)
  reference = mixture_draws(np.random.default_rng(1), NUM_SAMPLES)
  shape = (NUM_SAMPLES, 1, 1, 2)
  runs = [
    (
      "ancestral",
      n,
      lambda rng, n=n: sampling.ddpm_sample(
        d, model_fn, rng, shape, num_steps=n, clip_denoised=False
      ),
    )
    for n in (10, 20, 50, 100, 250, 1000)
  ]
  runs += [
    (
      "ddim",
      n,
      lambda rng, n=n: sampling.ddim_sample(
        d, model_fn, rng, shape, num_steps=n, clip_denoised=False
      ),
    )
    for n in (10, 20, 50, 100)
  ]
  runs += [
    (
      "dpm_solver++2m",
      n,
      lambda rng, n=n: sampling.dpm_solver_sample(
        d, model_fn, rng, shape, num_steps=n, clip_denoised=False
      ),
    )
    for n in (10, 15, 20, 50)
  ]
  sigmas_t = np.asarray(sampling.discrete_sigmas(d))
  denoise_fn = sampling.discrete_denoiser(d, model_fn)

  def sigma_run(solver, num_steps):
    # as config.sampling.sampler = solver selects it: EDM's grid over the schedule's σ range
    sampling_config = default.get_config().sampling
    sampling_config.sampler, sampling_config.num_steps = solver, num_steps
    sigma_range = float(sigmas_t[0]), float(sigmas_t[-1])
    trajectory = gaussian.sigma_space_trajectory(denoise_fn, *sigma_range, sampling_config)
    return lambda rng: sampling.sample(trajectory, rng, shape)

  # heun's n steps cost 2n - 1 evaluations (Euler on the last)
  for solver, steps in [
    ("euler", (10, 20, 50, 100)),
    ("heun", (6, 10, 25, 50)),
    ("dpmpp_2m", (10, 15, 20, 50)),
    ("euler_ancestral", (10, 20, 50, 100)),
    ("dpmpp_2m_sde", (10, 20, 50, 100)),
  ]:
    runs += [(solver, 2 * n - 1 if solver == "heun" else n, sigma_run(solver, n)) for n in steps]
  print(f"{'sampler':16s} {'NFE':>5s} {'sliced W1':>10s} {'seconds':>8s}", flush=True)
  for name, nfe, fn in runs:
    start = time.perf_counter()
    x = np.asarray(jax.jit(fn)(jax.random.key(0))).reshape(-1, 2)
    print(
      f"{name:16s} {nfe:5d} {sliced_wasserstein(x, reference):10.4f} "
      f"{time.perf_counter() - start:8.1f}",
      flush=True,
    )
  print(
    f"{'two data draws':16s} {'-':>5s} "
    f"{sliced_wasserstein(mixture_draws(np.random.default_rng(2), NUM_SAMPLES), reference):10.4f}"
  )


if __name__ == "__main__":
  main()
