"""ddpm_jax.load: a workdir samples and measures bits/dim in two lines; the compiled sampler is
reused when the seed, labels, guidance scale or η change."""

import numpy as np
import pytest

import ddpm_jax
from ddpm_jax import train
from helpers import tiny_config


@pytest.fixture(scope="module")
def conditional_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("conditional")
  config = tiny_config(num_train_steps=4)
  config.model.num_classes = 10
  config.sampling.clip_denoised = False  # an untrained model's x̂0 would clip to ±1 everywhere
  config.optim.ema_decay = 0.0  # the EMA of 4 steps would hardly depend on the labels yet
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def test_load_and_sample_in_two_lines_compiling_once(conditional_workdir):
  pipe = ddpm_jax.load(conditional_workdir)
  labels = np.arange(4) % 10
  images = pipe.sample(4, sampler="ddim", num_steps=5, labels=labels, guidance_scale=2.0)
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8 and pipe.step == 4
  again = pipe.sample(4, sampler="ddim", num_steps=5, labels=labels, guidance_scale=2.0)
  np.testing.assert_array_equal(images, again)  # a seed gives the same images
  floats = dict(sampler="ddim", num_steps=5, uint8=False)
  reference = pipe.sample(4, labels=labels, guidance_scale=2.0, **floats)
  others = [
    pipe.sample(4, labels=labels, guidance_scale=0.5, **floats),
    pipe.sample(4, labels=labels[::-1], guidance_scale=2.0, **floats),
    pipe.sample(4, labels=labels, guidance_scale=2.0, eta=1.0, **floats),
    pipe.sample(4, labels=labels, guidance_scale=2.0, seed=1, **floats),
  ]
  for other in others:  # each argument reaches the loop ...
    assert not np.array_equal(other, reference)
  guided = [fn for key, fn in pipe._samplers.items() if key[3]]  # key[3]: guided
  assert len(guided) == 1 and guided[0]._cache_size() == 1  # ... which compiled once


def test_zero_guidance_and_traced_eta_equal_the_plain_sampler(conditional_workdir):
  pipe = ddpm_jax.load(conditional_workdir)
  labels = np.arange(4) % 10
  # ε̃ = (1 + 0) ε(x, y) - 0 · ε(x, ∅) is the conditional model exactly.
  np.testing.assert_array_equal(
    pipe.sample(4, sampler="ddim", num_steps=5, labels=labels, guidance_scale=0.0),
    pipe.sample(4, sampler="ddim", num_steps=5, labels=labels),
  )
  # η = 0 passed at run time is the config's η = 0 compiled in (the training loop's sampler).
  import jax

  from ddpm_jax import families
  from ddpm_jax.jobs import sample as sample_lib

  config = pipe.config.copy_and_resolve_references()
  config.sampling.sampler, config.sampling.num_steps = "ddim", 5
  direct = sample_lib.make_sample_fn(families.get_family(config), 4, pipe.mesh)
  expected = direct(pipe.params, jax.random.key(0), None)
  from ddpm_jax import pixels

  np.testing.assert_array_equal(
    pipe.sample(4, sampler="ddim", num_steps=5, eta=0.0), pixels.to_uint8(np.asarray(expected))
  )


def test_bits_per_dim_of_images_and_clear_errors(conditional_workdir):
  pipe = ddpm_jax.load(conditional_workdir)
  images = pipe.sample(4, sampler="ddim", num_steps=5)
  bpd = pipe.bits_per_dim(images)
  assert bpd.shape == (4,) and np.all(np.isfinite(bpd)) and np.all(bpd > 0)
  with pytest.raises(ValueError, match="uint8"):
    pipe.bits_per_dim(images.astype(np.float32))
  with pytest.raises(ValueError, match="labels must be in"):
    pipe.sample(4, labels=[0, 1, 2, 10])
  with pytest.raises(ValueError, match="needs labels"):
    pipe.sample(4, guidance_scale=1.0)
  heun = pipe.sample(4, sampler="heun", num_steps=3, labels=[0, 1, 2, 3], guidance_scale=1.0)
  assert heun.shape == images.shape and heun.dtype == np.uint8
  with pytest.raises(ValueError, match="Unknown sampling.sampler 'lms'"):
    pipe.sample(4, sampler="lms")
  with pytest.raises(FileNotFoundError, match="config.json"):
    ddpm_jax.load(conditional_workdir + "/nothing")


def test_sampling_from_given_initial_noise_is_ddim_of_that_noise(conditional_workdir):
  import jax

  from ddpm_jax import models, sampling
  from ddpm_jax.families import gaussian

  pipe = ddpm_jax.load(conditional_workdir)
  config = pipe.config
  shape = (3, config.data.image_size, config.data.image_size, config.data.num_channels)
  x_T = np.asarray(jax.random.normal(jax.random.key(5), shape))
  floats = dict(sampler="ddim", num_steps=5, eta=0.0, uint8=False)
  got = pipe.sample(3, x_T=x_T, seed=0, **floats)
  # DDIM with η = 0 is a function of x_T alone: the seed does not matter, x_T does
  np.testing.assert_array_equal(pipe.sample(3, x_T=x_T, seed=1, **floats), got)
  assert np.mean(np.abs(pipe.sample(3, x_T=-x_T, **floats) - got)) > 1e-3
  # a second formulation: the public DDIM sampler on the network itself, from the same x_T
  model = models.get_model(config.model)
  model_fn = lambda x, t: model.apply(pipe.params, x, t)  # the null label (unconditional)
  d = gaussian.make_diffusion(config)
  want = jax.jit(
    lambda z: sampling.ddim_sample(
      d, model_fn, jax.random.key(0), x_T=z, num_steps=5, clip_denoised=False
    )
  )(x_T)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # batched differently: round-off
  with pytest.raises(ValueError, match="initial noise"):
    pipe.sample(3, x_T=x_T[:2], **floats)
