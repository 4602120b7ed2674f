"""Diffusion-based representation learning (config.family="representation"): the code z conditions
the U-Net, the family's loss is the Gaussian diffusion's given the encoder's code, its DDIM codec is
DDIM on the denoiser given z, and a trained encoder's linear probe beats the untrained encoder's."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import families, pixels
from ddpm_jax.data import sources
from ddpm_jax.evaluation import feature_net
from ddpm_jax.evaluation import representation as representation_eval
from ddpm_jax.families import config_validation
from ddpm_jax.models.unet import UNet
from helpers import REPO, tiny_config, with_random_zero_layers


def trained_looking(family, seed=0):
  """Initial parameters with the zero-initialised layers made random (an untrained U-Net's output
  is 0 and depends on nothing)."""
  return with_random_zero_layers(family.init_params(jax.random.key(seed)))


def test_the_embedding_conditions_the_unet_and_zero_is_the_null_embedding():
  model = UNet(
    ch=32, ch_mult=(1,), attn_resolutions=(), out_channels=1, embedding_dim=4, scale_shift_norm=True
  )
  x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.array([3, 7])
  params = with_random_zero_layers(model.init(jax.random.key(1), x, t))
  z1, z2 = jax.random.normal(jax.random.key(2), (2, 2, 4))
  out = lambda z: model.apply(params, x, t, embedding=z)
  assert float(jnp.abs(out(z1) - out(z2)).max()) > 1e-3
  np.testing.assert_array_equal(out(None), out(jnp.zeros((2, 4))))
  # added to the time embedding: Dense(4·ch) of z
  assert params["params"]["embedding_projection"]["kernel"].shape == (4, 128)


@pytest.mark.slow  # (the fast tier's 2 minutes: seconds of training or sampling)
def test_the_loss_is_the_diffusion_loss_of_the_denoiser_given_the_encoders_code():
  config = tiny_config(family="representation")
  config_validation.validate_config(config)
  family = families.get_family(config)
  params = trained_looking(family)
  x0 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
  batch = {"image": x0, "label": jnp.zeros(4, jnp.int32)}
  draws = family.draw(families.step_keys(jax.random.key(4)), batch, None)
  got = family.loss(params, batch, draws, None)
  # by hand: z = E(x0) at t = 0, x_t = √ᾱ x0 + √(1-ᾱ) ε, loss = mean (ε - ε_θ(x_t, t, z))²
  from ddpm_jax.families import gaussian, representation

  encoder = representation.make_encoder(config)
  z = encoder.apply(params["encoder"], x0, jnp.zeros(4, jnp.int32))
  np.testing.assert_allclose(family.represent(params, x0), z, rtol=1e-6)
  alpha_bar = jnp.asarray(gaussian.make_diffusion(config).alphas_cumprod)[draws["t"]]
  a = alpha_bar[:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * draws["eps"]
  eps_hat = family.model.apply(params["denoiser"], x_t, draws["t"], embedding=z)
  want = jnp.mean((draws["eps"] - eps_hat) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # the gradient reaches the encoder
  grads = jax.grad(lambda p: family.loss(p, batch, draws, None).mean())(params)
  assert float(jax.tree_util.tree_reduce(lambda a, g: a + jnp.abs(g).sum(), grads["encoder"], 0.0))


def test_ddim_given_the_code_is_ddim_on_the_denoiser_given_that_code():
  from ddpm_jax import sampling
  from ddpm_jax.families import gaussian

  config = tiny_config(family="representation")
  family = families.get_family(config)
  params = trained_looking(family)
  x0 = jax.random.uniform(jax.random.key(5), (3, 8, 8, 1), minval=-1.0, maxval=1.0)
  z = family.represent(params, x0)
  encode, decode = family.make_latent_codec(10)
  # by hand: DDIM's ODE on ε_θ(·, ·, z)
  g = gaussian.make_diffusion(config)
  eps_fn = lambda code: lambda x, t: family.model.apply(params["denoiser"], x, t, embedding=code)
  x_T = sampling.ddim_encode(g, eps_fn(z), x0, 10)
  np.testing.assert_allclose(encode(params, x0), x_T, rtol=1e-5, atol=1e-5)  # z = E(x0)
  cond = families.Cond(embedding=z)
  want = sampling.ddim_sample(
    g, eps_fn(z), jax.random.key(0), x_T=x_T, num_steps=10, clip_denoised=False
  )
  np.testing.assert_allclose(decode(params, x_T, cond), want, rtol=1e-5, atol=1e-5)
  other = families.Cond(embedding=jnp.roll(z, 1, axis=0))  # another image's code
  assert float(jnp.abs(decode(params, x_T, other) - want).max()) > 1e-2
  with pytest.raises(ValueError, match="decodes codes z"):
    family.make_sampler(3)(params, jax.random.key(0), None)
  samples = family.make_sampler(3)(params, jax.random.key(0), cond)
  assert samples.shape == x0.shape and bool(jnp.all(jnp.isfinite(samples)))


@pytest.mark.parametrize("family", ["gaussian", "representation", "edm"])
def test_an_embedding_width_no_family_feeds_is_refused(family):
  config = tiny_config(family=family)
  config.model.embedding_dim = 16  # a U-Net field: the representation's width is latent_dim
  with pytest.raises(config_validation.InvalidConfigError, match="model.embedding_dim=16"):
    config_validation.validate_config(config)


def test_an_embedding_a_groupnorm_would_erase_is_refused():
  config = tiny_config(family="representation")
  config.model.scale_shift_norm = False  # 32 channels in 32 groups: z added, then normalised away
  with pytest.raises(config_validation.InvalidConfigError, match="scale_shift_norm"):
    config_validation.validate_config(config)
  config.model.ch = 64  # 2 channels per group: the added code survives
  config_validation.validate_config(config)


@pytest.mark.parametrize(
  "field, value",
  [("model.num_classes", 10), ("sampling.guidance_scale", 2.0), ("diffusion.rescale_timesteps", 1)],
)
def test_labels_guidance_and_rescaled_time_are_refused(field, value):
  config = tiny_config(family="representation")
  block, name = field.split(".")
  config[block][name] = type(config[block][name])(value)
  with pytest.raises(config_validation.InvalidConfigError, match="representation"):
    config_validation.validate_config(config)


def test_the_probe_direction_is_the_bayes_normal_in_standardised_codes():
  """Two Gaussian classes of equal isotropic covariance differing by Δ: in standardised codes
  z̃ = (z - μ)/σ the Bayes log-odds is linear with normal σ ⊙ Δ; the step is √D long there, and
  `manipulate` moves codes linearly along it."""
  rng = np.random.default_rng(0)
  dim, n = 6, 20000
  delta = np.array([1.5, -1.0, 0.5, 0.0, 0.0, 0.0])
  spread = np.array([1.0, 3.0, 0.5, 2.0, 1.0, 1.0])  # per-dimension offsets of the classes' means
  labels = rng.integers(0, 3, n)
  means = np.stack([np.zeros(dim), spread, spread + delta])[labels]
  codes = means + rng.normal(size=(n, dim))
  step = representation_eval.probe_direction(codes[labels > 0], labels[labels > 0], 2, c=100.0)
  sigma = codes[labels > 0].std(0)
  np.testing.assert_allclose(np.linalg.norm(step / sigma), np.sqrt(dim), rtol=1e-3)
  bayes = sigma * delta
  cosine = (step / sigma) @ bayes / (np.linalg.norm(step / sigma) * np.linalg.norm(bayes))
  assert cosine > 0.995, cosine
  scales = np.array([0.0, 0.5, 2.0], np.float32)
  moved = representation_eval.manipulate(codes[:4], step, scales)
  assert moved.shape == (4, 3, dim)
  np.testing.assert_array_equal(moved[:, 0], codes[:4])
  np.testing.assert_allclose(moved[:, 2] - moved[:, 1], np.tile(1.5 * step, (4, 1)), rtol=1e-5)


@pytest.mark.extended
def test_a_trained_representation_beats_the_untrained_encoder_from_the_command_line(tmp_path):
  sys.path.insert(0, REPO)
  from configs import representation_default
  from ddpm_jax.jobs import evaluate, train

  config = representation_default.get_config()
  config.training.num_train_steps = config.training.checkpoint_every_steps = 400
  config.optim.ema_decay = 0.99
  config.data.num_workers = 0
  config.representation.num_eval_images = 64
  config.representation.eval_num_steps = 10
  config.sampling.num_samples = 0
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  results = evaluate.evaluate(config, workdir)
  assert results["probe_accuracy"] > results["probe_accuracy_untrained"] + 0.03, results
  assert 0.0 < results["reconstruction_mse"] < 0.5, results
  # decoded from fresh noise, the codes keep more of the class than chance (0.1)
  assert results["semantic_consistency"] > 0.3, results
  overrides = [
    "--config.training.num_train_steps=400",
    "--config.sampling.num_samples=8",
    "--config.sampling.num_steps=5",
    "--config.data.num_workers=0",
  ]
  first_labels = sources.DigitsSource("test").labels[:2]
  target = min(set(range(10)) - set(first_labels.tolist()))
  manipulation = [
    f"--config.representation.manipulate_class={target}",
    "--config.representation.manipulate_scales=(0.0,3.0)",
  ]
  for mode in ("represent", "sample", "interpolate"):
    subprocess.run(
      [
        sys.executable,
        "-m",
        "ddpm_jax.main",
        f"--config={REPO}/configs/representation_default.py",
        f"--workdir={workdir}",
        f"--mode={mode}",
        *overrides,
        *(manipulation if mode == "interpolate" else []),
      ],
      check=True,
      cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
  codes = np.load(os.path.join(workdir, "represent", "train_400.npz"))

  assert codes["z"].shape == (1500, 32)
  np.testing.assert_array_equal(codes["labels"], sources.DigitsSource("train").labels)
  samples = np.load(os.path.join(workdir, "samples", "samples_400.npz"))
  assert samples["images"].shape == (8, 8, 8, 1) and samples["embeddings"].shape == (8, 32)
  # the samples decode the first held-out images' codes, and carry those images' labels
  np.testing.assert_array_equal(samples["labels"], sources.DigitsSource("test").labels[:8])
  # interpolation: the first two held-out images' codes, linearly, beside their DDIM latents
  frames = np.load(os.path.join(workdir, "edits", "interpolate_400.npz"))
  assert frames["codes"].shape == (2, 32) and frames["frames"].shape[1:] == (8, 8, 1)
  np.testing.assert_array_equal(frames["inputs"], sources.DigitsSource("test").images[:2])
  # manipulation: each image from its own x_T, its code moved towards class `target`; the shipped
  # feature network gives `target` more probability at the far end than at scale 0
  manipulated = frames["manipulated"]
  assert manipulated.shape == (2, 2, 8, 8, 1), manipulated.shape
  net_params, _ = feature_net.load(feature_net.default_path("digits", 8))
  logits = feature_net.apply(net_params, pixels.from_uint8(manipulated.reshape(4, 8, 8, 1)))[1]
  p_target = np.asarray(jax.nn.softmax(logits))[:, target].reshape(2, 2)
  assert np.all(p_target[:, 1] > p_target[:, 0] + 0.2), p_target
