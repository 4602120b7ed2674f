"""EDM: the preconditioning's unit variances and the loss's optimum on data of std σ_data (Monte
Carlo), and the family through the train loop, --mode=sample and --mode=eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ddpm_jax import edm, families, sampling, train
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import evaluate
from ddpm_jax.jobs import sample as sample_lib
from helpers import tiny_config, with_random_zero_layers

SIGMA_DATA = 0.5
SIGMAS = np.array([0.002, 0.1, 0.5, 2.0, 80.0])


def gaussian_data(n=200_000):
  keys = jax.random.split(jax.random.key(0), 2)
  y = SIGMA_DATA * jax.random.normal(keys[0], (len(SIGMAS), n))
  return y, jax.random.normal(keys[1], y.shape)


def test_network_inputs_and_targets_have_unit_variance():
  # EDM §5 / Appendix B.6: c_in gives F inputs of variance 1, c_skip and c_out a training target
  # (y - c_skip x)/c_out of variance 1, for data of std σ_data at every σ
  y, n = gaussian_data()
  sigma = jnp.asarray(SIGMAS)[:, None]
  c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, SIGMA_DATA)
  x = y + sigma * n
  np.testing.assert_allclose(np.var(c_in * x, axis=1), 1.0, rtol=1e-2)
  np.testing.assert_allclose(np.var((y - c_skip * x) / c_out, axis=1), 1.0, rtol=1e-2)
  np.testing.assert_allclose(edm.loss_weight(sigma, SIGMA_DATA) * c_out**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(c_noise[:, 0], np.log(SIGMAS) / 4, rtol=1e-6)


def test_loss_is_one_at_its_optimum_for_gaussian_data():
  # For y ~ N(0, σ_d²) the optimal denoiser is c_skip x (F = 0), whose error is the posterior
  # variance σ² σ_d²/(σ² + σ_d²) = 1/λ(σ): the weighted loss is 1 at every σ; any other F is worse.
  y, n = gaussian_data(50_000)
  images = y.reshape(len(SIGMAS), -1, 10, 10, 1)[:, :500]
  noise = n.reshape(images.shape[0], -1, 10, 10, 1)[:, :500]
  for i, sigma in enumerate(SIGMAS):
    sigmas = jnp.full((images.shape[1],), sigma)
    optimal = edm.loss(lambda x, c: jnp.zeros_like(x), images[i], sigmas, noise[i], SIGMA_DATA)
    assert abs(float(optimal.mean()) - 1.0) < 0.02, (sigma, optimal.mean())
    worse = edm.loss(lambda x, c: 0.3 * x, images[i], sigmas, noise[i], SIGMA_DATA)
    assert float(worse.mean()) > float(optimal.mean()) + 0.05


def test_sigma_is_log_normal():
  sigma = edm.sample_sigma(jax.random.key(1), 100_000, -1.2, 1.2)
  log_sigma = np.log(np.asarray(sigma))
  assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["heun"])
def test_edm_trains_samples_and_evaluates_with_the_same_loop(tmp_path, solver):
  config = tiny_config(num_train_steps=40, batch_size=32)
  default.with_family(config, "edm")
  config.sampling.sampler, config.sampling.num_steps = solver, 6
  config.sampling.num_samples = config.sampling.batch_size = 8
  config.training.sample_every_steps = config.training.checkpoint_every_steps = 40
  config.eval.num_fid_samples = 16
  config.eval.bpd_num_batches, config.eval.num_loss_batches = 0, 1
  validate_config(config)
  family = families.get_family(config)
  assert family.bits_per_dim is None
  train.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "samples" / "ema_step_00000040.png").exists()
  images = np.load(sample_lib.sample(config, str(tmp_path)))["images"]
  assert images.shape == (8, 8, 8, 1) and images.std() > 0
  results = evaluate.evaluate(config, str(tmp_path))
  assert np.isfinite(results["feature_fd"]) and np.isfinite(results["loss"])


def test_edm_config_problems_are_named():
  config = tiny_config()
  default.with_family(config, "edm")
  config.sampling.sampler, config.eval.bpd_num_batches = "ddim", 1
  config.edm.sigma_min = 100.0
  with pytest.raises(ValueError, match=r"σ-space solver(.|\n)*sigma_min=100.0(.|\n)*no likelihood"):
    validate_config(config)


@pytest.mark.parametrize("family_name", ["edm", "score_sde"])
def test_the_probability_flow_ode_encodes_and_decodes_images(family_name):
  """--mode=interpolate's encoder for EDM and score SDEs: decode(encode(x)) = x (Heun on the
  σ-space ODE, random weights)."""
  from ddpm_jax import families

  config = tiny_config(family=family_name)
  if family_name == "score_sde":
    config.sde.type = "ve"
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  params = with_random_zero_layers(params, 1, 0.02)
  # (a random network is rough in t: the score SDE's needs the finer grid)
  encode, decode = family.make_latent_codec(60 if family_name == "edm" else 300)
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  z = jax.jit(encode)(params, x)
  assert bool(jnp.all(jnp.isfinite(z)))  # (unit scale for the true score: test_sigma_sampling)
  np.testing.assert_allclose(jax.jit(decode)(params, z), x, atol=2e-2)


def test_edm_takes_cross_attention_contexts_and_guides_towards_them():
  """model.context_dim in the EDM family: contexts (dropped to ∅ at training.label_dropout) in the
  loss, and the sampler's denoiser guided towards them is (1 + w) D(x; σ, c) - w D(x; σ, ∅)."""
  from ddpm_jax import families
  from ddpm_jax.families import Cond
  from ddpm_jax.families import gaussian as gaussian_family

  config = tiny_config(family="edm")
  config.model.context_dim, config.data.context_key = 8, "caption"
  config.sampling.guidance_scale = 1.0
  validate_config(config)
  family = families.get_family(config)
  assert family.conditions == ("context",)
  params = family.init_params(jax.random.key(0))
  params = with_random_zero_layers(params, 1, 0.05)
  rng = np.random.default_rng(0)
  context = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  batch = {"image": jnp.zeros((2, 8, 8, 1)), "context": context}
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, None)
  assert draws["context"].shape == (2, 3, 8)
  assert np.all(np.isfinite(family.loss(params, batch, draws, None)))
  w = 2.0
  trajectory = family.make_trajectory()(params, Cond(context=context), None, {"guidance_scale": w})
  denoise = lambda c: (
    lambda x, sigma: edm.denoise(
      lambda x_in, c_noise: family.model.apply(params, x_in, c_noise, None, c), x, sigma, 0.5
    )
  )
  guided = lambda x, sigma: (
    (1 + w) * denoise(context)(x, sigma) - w * denoise(jnp.zeros_like(context))(x, sigma)
  )
  sigmas = gaussian_family.sigma_grid(config.sampling, config.sampling.num_steps, 0.002, 80.0)
  manual = sampling.sigma_trajectory(guided, sigmas, "heun")
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 1)) * 10, jnp.float32)
  step = lambda traj: traj.step(x, None, 3, jax.random.key(4))[0]
  np.testing.assert_allclose(step(trajectory), step(manual), rtol=1e-4, atol=1e-4)
  plain = sampling.sigma_trajectory(denoise(context), sigmas, "heun")
  assert np.max(np.abs(np.asarray(step(plain)) - np.asarray(step(trajectory)))) > 1e-3
