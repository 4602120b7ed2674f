"""Timestep respacing: the kept grid, and the respaced diffusion keeping ᾱ at the kept steps."""

from conftest import alphas_cumprod64, make
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, sampling, schedules


def test_space_timesteps_grids():
  assert sampling.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  assert sampling.space_timesteps(1000, "ddim1000") == list(range(1000))
  assert sampling.space_timesteps(100, [10]) == [round(i * 11) for i in range(10)]
  # Three sections of 100 steps: ends of each section included.
  grid = sampling.space_timesteps(300, [2, 3, 1])
  assert grid == [0, 99, 100, 150, 199, 200]
  assert sampling.space_timesteps(300, "2,3,1") == grid
  with pytest.raises(ValueError, match="exactly 7 DDIM steps"):
    sampling.space_timesteps(10, "ddim7")
  with pytest.raises(ValueError, match="Cannot take"):
    sampling.space_timesteps(10, [20])


@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_respaced_diffusion_keeps_alpha_bar_and_maps_timesteps(betas, var_type):
  d = make(betas, var_type=var_type, loss_type="hybrid" if var_type == "learned_range" else "mse")
  kept = sampling.space_timesteps(100, "ddim10")
  r = diffusion.respace(d, kept)
  assert r.num_timesteps == 10 and (r.var_type, r.loss_type) == (d.var_type, d.loss_type)
  np.testing.assert_array_equal(r.timestep_map, kept)
  np.testing.assert_allclose(r.alphas_cumprod, alphas_cumprod64(betas)[kept], rtol=1e-5)
  assert float(r.alphas_cumprod_prev[0]) == 1.0  # the last DDIM step ends at ᾱ = 1
  # Respacing a respaced diffusion composes the maps.
  rr = diffusion.respace(r, [0, 5, 9])
  np.testing.assert_array_equal(rr.timestep_map, np.asarray(kept)[[0, 5, 9]])
  np.testing.assert_allclose(
    rr.alphas_cumprod, alphas_cumprod64(betas)[np.asarray(kept)[[0, 5, 9]]], rtol=1e-5
  )


def test_respacing_all_steps_is_the_identity(betas):
  d = make(betas)
  r = diffusion.respace(d, range(100))
  for name in (
    "alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
  ):
    np.testing.assert_allclose(
      getattr(r, name), getattr(d, name), rtol=1e-5, atol=1e-9, err_msg=name
    )


def test_model_sees_original_timesteps_after_respacing():
  d = diffusion.respace(
    make(schedules.get_beta_schedule("linear", 1000)), sampling.space_timesteps(1000, "ddim50")
  )
  seen = []
  model_fn = lambda x_t, t: (seen.append(np.asarray(t)), jnp.zeros_like(x_t))[1]
  diffusion.training_losses(
    d, model_fn, jnp.zeros((3, 2, 2, 1)), jnp.array([0, 1, 49]), jnp.ones((3, 2, 2, 1))
  )
  np.testing.assert_array_equal(seen[0], [0, 20, 980])


def test_respacing_starts_from_the_float64_betas():
  """guided-diffusion respaces from its float64 βs; the float32 copy gave ᾱ off by up to 3e-9
  relative at T = 4000 (measured; below float32's resolution for most entries)."""
  from ddpm_jax import diffusion, sampling, schedules

  betas = schedules.get_beta_schedule("cosine", 4000)
  kept = sampling.space_timesteps(4000, "ddim25")
  respaced = diffusion.respace(diffusion.GaussianDiffusion.from_betas(betas), kept)
  want = np.cumprod(1.0 - betas)[kept]
  np.testing.assert_allclose(np.cumprod(1.0 - np.asarray(respaced.betas_float64)), want, rtol=1e-12)
  np.testing.assert_array_equal(np.asarray(respaced.alphas_cumprod), want.astype(np.float32))
  twice = diffusion.respace(respaced, [0, 10, 24])  # respacing a respaced diffusion
  np.testing.assert_allclose(
    np.cumprod(1.0 - np.asarray(twice.betas_float64)), want[[0, 10, 24]], rtol=1e-12
  )
