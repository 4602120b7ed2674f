"""Zero terminal SNR (Lin et al. 2024): the rescaled schedule against diffusers' own, trailing
timesteps, DDIM from ᾱ_T = 0 with the exact v-model of Gaussian data, the guidance rescale, and a
v-model trained and sampled on the offline default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, sampling, schedules, train
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import evaluate
from ddpm_jax.jobs import sample as sample_lib
from helpers import tiny_config

MU, S = 0.3, 0.5  # data x0 ~ N(μ, s²) in every dimension


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_rescaled_schedule_is_diffusers_and_ends_at_zero_snr(name):
  from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
  import torch

  betas = schedules.get_beta_schedule(name, 1000)
  rescaled = schedules.rescale_zero_terminal_snr(betas)
  reference = rescale_zero_terminal_snr(torch.tensor(betas, dtype=torch.float64)).numpy()
  np.testing.assert_allclose(rescaled, reference, rtol=1e-12, atol=1e-15)
  alphas_cumprod, new = np.cumprod(1 - betas), np.cumprod(1 - rescaled)
  assert new[-1] == 0.0 and rescaled[-1] == 1.0 and np.all(rescaled[:-1] < 1)
  assert new[0] == pytest.approx(alphas_cumprod[0], rel=1e-12)
  # √ᾱ' is affine in √ᾱ: the other ᾱ keep their relative shape
  ratio = np.sqrt(new[:-1]) / (np.sqrt(alphas_cumprod[:-1]) - np.sqrt(alphas_cumprod[-1]))
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
  d = diffusion.GaussianDiffusion.from_betas(rescaled, "v")
  assert float(d.alphas_cumprod[-1]) == 0.0 and float(d.sqrt_one_minus_alphas_cumprod[-1]) == 1.0
  with pytest.raises(ValueError, match="the last may be 1"):
    schedules.check_betas(np.append(rescaled[::-1], 0.5))


def test_trailing_timesteps_are_diffusers():
  from diffusers import DDIMScheduler

  for num_steps in (10, 50, 999):
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    scheduler.set_timesteps(num_steps)
    expected = sorted(int(t) for t in scheduler.timesteps)
    assert sampling.space_timesteps(1000, f"trailing{num_steps}") == expected
  assert sampling.space_timesteps(1000, "trailing50")[-1] == 999


def exact_v_model(d):
  """v(x_t, t) of Gaussian data: x̂0 = E[x0 | x_t] = μ + √ᾱ s²/(ᾱ s² + 1 - ᾱ) (x_t - √ᾱ μ),
  ε̂ = (x_t - √ᾱ x̂0)/√(1 - ᾱ), v = √ᾱ ε̂ - √(1 - ᾱ) x̂0; t the original timesteps."""

  def model_fn(x_t, t):
    a = diffusion.extract(d.alphas_cumprod, t, x_t.ndim)
    x0 = MU + jnp.sqrt(a) * S**2 / (a * S**2 + 1 - a) * (x_t - jnp.sqrt(a) * MU)
    eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

  return model_fn


def test_ddim_from_zero_terminal_snr_follows_the_exact_flow():
  d = diffusion.GaussianDiffusion.from_betas(
    schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule("linear", 1000)), "v"
  )
  z = jax.random.normal(jax.random.key(0), (4000, 2, 2, 1))
  errors = []
  for num_steps in (25, 100):
    kept = sampling.space_timesteps(1000, f"trailing{num_steps}")
    x0 = sampling.ddim_sample(
      diffusion.respace(d, kept),
      exact_v_model(d),
      jax.random.key(0),
      x_T=z,
      num_steps=None,
      clip_denoised=False,
    )
    assert np.all(np.isfinite(x0))
    # at ᾱ_T = 0 the flow keeps (x_t - √ᾱ μ)/√(ᾱ s² + 1 - ᾱ): x0 = μ + s x_T
    errors.append(float(np.max(np.abs(np.asarray(x0) - (MU + S * z)))))
  assert errors[1] < 0.1 and errors[1] < errors[0] / 2, errors  # converging (max over |z| ≤ 4)
  # ancestral sampling from ᾱ_T = 0 (all T steps: fewer steps' x̂0 lacks Var[x0 | x_t]): the data
  x0 = sampling.ddpm_sample(d, exact_v_model(d), jax.random.key(1), z.shape, clip_denoised=False)
  x0 = np.asarray(x0, np.float64).ravel()
  assert x0.mean() == pytest.approx(MU, abs=5 * S / np.sqrt(x0.size) + 0.01)
  assert x0.var() == pytest.approx(S**2, rel=5 * np.sqrt(2 / x0.size) + 0.03)


def test_guidance_rescale_is_lins_algorithm_2():
  rng = np.random.default_rng(0)
  cond, uncond = (jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32) for _ in range(2))
  w, phi = 3.0, 0.7
  guided = lambda rescale: sampling.classifier_free_guidance(
    lambda x, t: cond, lambda x, t: uncond, w, 2, rescale
  )(cond, None)
  cfg = (1 + w) * np.asarray(cond) - w * np.asarray(uncond)
  np.testing.assert_allclose(guided(0.0), cfg, rtol=1e-6)
  std = lambda a: np.asarray(a).std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(std(guided(1.0)), std(cond), rtol=1e-5)
  factor = phi * std(cond) / std(cfg) + 1 - phi
  np.testing.assert_allclose(guided(phi), cfg * factor, rtol=1e-5)


def test_guidance_rescale_acts_on_the_noise_prediction_of_x0_and_edm_models():
  """An x0-model's guided output rescaled as Lin et al. rescale v (at ᾱ_T = 0 too), EDM's D as
  its ε = (x - D)/σ: not the x0-space std."""
  from ddpm_jax.families import edm as edm_family
  from ddpm_jax.families import gaussian

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32)
  cond, uncond = (jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32) for _ in range(2))
  w, phi = 3.0, 0.7
  rescaled = lambda a, b: sampling.classifier_free_guidance(
    lambda x, t: a, lambda x, t: b, w, 2, phi
  )(x, None)
  betas = schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule("linear", 100))
  d = diffusion.GaussianDiffusion.from_betas(betas, mean_type="x0")
  t = jnp.array([99, 50, 3])
  to_v, from_v = gaussian.x0_as_v(d)
  got = sampling.classifier_free_guidance(
    lambda x, s: cond, lambda x, s: uncond, w, 2, phi, (to_v, from_v)
  )(x, t)
  want = from_v(x, t, rescaled(to_v(x, t, cond), to_v(x, t, uncond)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(got)))
  assert np.max(np.abs(got - rescaled(cond, uncond))) > 1e-2  # x0-space rescaling differs
  sigma = jnp.array([80.0, 1.0, 0.01])
  to_eps, from_eps = edm_family.DENOISER_AS_EPS
  got = sampling.classifier_free_guidance(
    lambda x, s: cond, lambda x, s: uncond, w, 2, phi, edm_family.DENOISER_AS_EPS
  )(x, sigma)
  want = from_eps(x, sigma, rescaled(to_eps(x, sigma, cond), to_eps(x, sigma, uncond)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_v_model_trains_samples_and_evaluates_at_zero_terminal_snr(tmp_path):
  config = tiny_config(num_train_steps=8)
  config.diffusion.zero_terminal_snr, config.diffusion.mean_type = True, "v"
  config.sampling.timestep_spacing = "trailing"
  config.sampling.num_samples = config.sampling.batch_size = 4
  config.training.sample_every_steps = 8
  config.eval.bpd_num_batches = 1
  validate_config(config)
  train.train_and_evaluate(config, str(tmp_path))  # its sample grid: trailing DDIM
  assert (tmp_path / "samples" / "ema_step_00000008.png").exists()
  config.sampling.sampler = "ddpm"
  images = np.load(sample_lib.sample(config, str(tmp_path)))["images"]
  assert images.shape == (4, 8, 8, 1) and images.std() > 0
  config.eval.num_fid_samples = 0
  results = evaluate.evaluate(config, str(tmp_path))
  assert np.isfinite(results["bpd"]) and results["bpd"] > 0, results


def test_the_log_snr_and_sigma_solvers_follow_the_exact_flow_from_zero_terminal_snr():
  """DPM-Solver++ and the σ-space solvers start at ᾱ_T = 2^-24 (diffusers' choice; σ_T = 4096):
  from the exact v-model of Gaussian data they land on the flow's x0 = μ + s x_T."""
  d = diffusion.GaussianDiffusion.from_betas(
    schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule("linear", 1000)), "v"
  )
  z = jax.random.normal(jax.random.key(0), (4000, 2, 2, 1))
  model_fn = exact_v_model(d)
  x0 = sampling.dpm_solver_sample(
    d, model_fn, jax.random.key(1), x_T=z, num_steps=25, clip_denoised=False
  )
  assert np.all(np.isfinite(x0)) and float(np.max(np.abs(np.asarray(x0) - (MU + S * z)))) < 0.05
  sigmas = np.asarray(sampling.discrete_sigmas(d))
  assert sigmas[-1] == pytest.approx(4096.0, rel=1e-6) and np.all(np.isfinite(sigmas))
  log_sigmas = jnp.log(jnp.asarray(sigmas))

  def fractional_v_model(x_t, t):  # exact_v_model at the fractional t the σ-solvers give
    sigma = jnp.exp(jnp.interp(t, jnp.arange(len(sigmas)), log_sigmas)).reshape(-1, 1, 1, 1)
    a = 1.0 / (1.0 + sigma**2)
    x0 = MU + jnp.sqrt(a) * S**2 / (a * S**2 + 1 - a) * (x_t - jnp.sqrt(a) * MU)
    eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

  denoise_fn = sampling.discrete_denoiser(d, fractional_v_model)
  errors = []
  for num_steps in (60, 120):  # (its denoiser is the exact one: Heun's own error, 2nd order)
    grid = sampling.karras_sigmas(num_steps, float(sigmas[0]), float(sigmas[-1]))
    x0 = sampling.sigma_sample(denoise_fn, grid[0] * z, grid, "heun")
    errors.append(float(np.max(np.abs(np.asarray(x0) - (MU + S * z)))))
  assert errors[1] < 0.01 and errors[0] / errors[1] > 3.5, errors


def test_what_cannot_run_at_zero_terminal_snr_is_refused_by_name():
  config = tiny_config()
  config.diffusion.zero_terminal_snr = True
  with pytest.raises(ValueError, match="mean_type='v'"):
    validate_config(config)
  config.diffusion.mean_type = "v"
  for sampler in ("dpm_solver", "heun", "dpmpp_2m"):  # λ_T and σ_T finite: ZERO_SNR_ALPHA_BAR
    config.sampling.sampler = sampler
    validate_config(config)
  config.sampling.sampler, config.sampling.timestep_spacing = "ddim", "leading"
  with pytest.raises(ValueError, match="timestep_spacing 'leading'"):
    validate_config(config)
  config.sampling.guidance_rescale = 1.5  # out of range: refused first, alone
  with pytest.raises(ValueError, match="guidance_rescale=1.5 must be >= 0 and <= 1"):
    validate_config(config)
