"""ADM-U super-resolution: guided-diffusion's resampling and SuperResModel (converted, same
outputs), and the super_res family trained on the digits' own downsampled images, sampled as a
cascade from a base model's workdir and evaluated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_convert import randomized
import torch
import torch.nn.functional as F

from configs import default
import ddpm_jax
from ddpm_jax import convert, families, models, pixels, super_res, train
from ddpm_jax.data import sources
from ddpm_jax.families import Cond
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import evaluate
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.runtime import parallel
from helpers import tiny_config


def nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("low, high", [(4, 8), (4, 16), (8, 16)])
def test_resampling_is_guided_diffusions(low, high):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, high, high, 3)).astype(np.float32)
  low_res = rng.normal(size=(2, low, low, 3)).astype(np.float32)
  # super_res_train's low-res inputs and SuperResModel.forward's upsampling
  want_down = F.interpolate(nchw(x), low, mode="area").numpy().transpose(0, 2, 3, 1)
  want_up = F.interpolate(nchw(low_res), (high, high), mode="bilinear").numpy()
  np.testing.assert_allclose(super_res.downsample(jnp.asarray(x), low), want_down, atol=1e-6)
  np.testing.assert_allclose(
    super_res.upsample(jnp.asarray(low_res), high), want_up.transpose(0, 2, 3, 1), atol=1e-6
  )


def test_converted_upsampler_gives_super_res_models_output():
  from guided_diffusion.unet import SuperResModel

  reference = randomized(
    SuperResModel(
      image_size=16,
      in_channels=3,
      model_channels=32,
      out_channels=6,
      num_res_blocks=1,
      attention_resolutions=(2,),  # downsampling rates: the 8×8 level
      channel_mult=(1, 2),
      num_classes=1000,
      num_head_channels=16,
      use_scale_shift_norm=True,
      resblock_updown=True,
    )
  )
  model_config, params = convert.from_guided_diffusion_super_res(
    reference.state_dict(),
    large_size=16,
    small_size=4,
    channel_mult="1,2",
    num_channels=32,
    num_res_blocks=1,
    attention_resolutions="8",
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
    class_cond=True,
  )
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  low_res = rng.uniform(-1, 1, size=(2, 4, 4, 3)).astype(np.float32)
  t, y = np.array([3, 700]), np.array([7, 999])
  with torch.no_grad():
    want = reference(
      nchw(x), torch.from_numpy(t), low_res=nchw(low_res), y=torch.from_numpy(y)
    ).numpy()
  got = jax.jit(models.get_model(model_config).apply)(
    params, super_res.model_input(jnp.asarray(x), jnp.asarray(low_res)), t, y
  )
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_upsampler_presets_have_sr_create_models_parameter_counts():
  # sr_create_model(**flags)'s parameter counts (guided_diffusion.script_util, its README's flags)
  counts = {
    "adm_imagenet64_256_upsampler": 311_795_910,
    "adm_imagenet128_512_upsampler": 308_835_270,
  }
  for name, flags in convert.SUPER_RES_PRESETS.items():
    config = convert.guided_diffusion_super_res_config(
      convert.parse_model_flags(flags, convert.SR_MODEL_AND_DIFFUSION_DEFAULTS)
    )
    validate_config(config)
    shapes = jax.eval_shape(families.get_family(config).init_params, jax.random.key(0))
    assert sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes)) == counts[name], name


def super_res_config(num_train_steps):
  config = tiny_config(num_train_steps=num_train_steps, batch_size=32)
  default.with_family(config, "super_res")
  config.super_res.low_res_size = 4
  # x0-prediction: usable samples after 100 steps (an ε-model's high-noise steps need far more)
  config.diffusion.mean_type = "x0"
  config.sampling.num_steps = 10
  config.training.checkpoint_every_steps = num_train_steps  # a save costs as much as ~20 steps
  return config


@pytest.mark.extended
def test_super_resolution_trains_samples_a_cascade_and_evaluates(tmp_path):
  config = super_res_config(num_train_steps=100)
  validate_config(config)
  state = train.train_and_evaluate(config, str(tmp_path / "super_res"))
  family, mesh = families.get_family(config), parallel.make_mesh()
  # Held-out inputs: the 4×4 area-downsampled test digits. The samples downsample back to them,
  # far closer than to another digit's.
  # one batch size (8) throughout: one compilation of each program
  cond = sample_lib.conditioning_inputs(config, family, 8, mesh)
  low_res = cond.low_res
  assert cond.label is None and cond.context is None and low_res.shape == (8, 4, 4, 1)
  sample_fn = sample_lib.make_sample_fn(family, 8, mesh)
  samples = sample_fn(state.params, jax.random.key(0), Cond(low_res=jnp.asarray(low_res)))
  down = np.asarray(super_res.downsample(samples, 4))
  matched = np.mean((down - low_res) ** 2)
  mismatched = np.mean((down - np.roll(low_res, 1, axis=0)) ** 2)
  assert matched < 0.1 * mismatched, (matched, mismatched)

  # The cascade: a 4×4 base model's samples are the upsampler's inputs.
  base = tiny_config(num_train_steps=2)
  base.data.image_size = 4
  base.sampling.num_samples = base.sampling.batch_size = 8
  train.train_and_evaluate(base, str(tmp_path / "base"))
  base_images = np.load(sample_lib.sample(base, str(tmp_path / "base")))["images"]
  config.super_res.low_res_workdir = str(tmp_path / "base")
  config.sampling.num_samples = config.sampling.batch_size = 8
  out = np.load(sample_lib.sample(config, str(tmp_path / "super_res")))
  np.testing.assert_array_equal(out["low_res"], base_images)
  assert out["images"].shape == (8, 8, 8, 1) and out["images"].dtype == np.uint8

  # the notebook pipeline upsamples given images
  pipe = ddpm_jax.load(str(tmp_path / "super_res"))
  upsampled = pipe.sample(8, low_res=base_images, seed=1)
  assert upsampled.shape == (8, 8, 8, 1) and np.all(np.isfinite(pipe.bits_per_dim(upsampled)))
  heun = pipe.sample(8, low_res=base_images, sampler="heun", num_steps=3)  # the σ-space solvers too
  assert heun.shape == (8, 8, 8, 1) and heun.dtype == np.uint8
  with pytest.raises(ValueError, match="low_res"):
    pipe.sample(8)

  # --mode=eval: bits/dim given each digit's own low-res image, and the sample metrics
  config.super_res.low_res_workdir = None
  config.eval.num_fid_samples = 8
  results = evaluate.evaluate(config, str(tmp_path / "super_res"))
  assert np.isfinite(results["bpd"]) and results["bpd"] > 0 and "feature_fd" in results, results
  # the bound of the test digits is better given their own low-res images than another's
  test_digits = jnp.asarray(pixels.from_uint8(sources.load_split(config.data, "test")[0]))
  bits = jax.jit(family.bits_per_dim)
  own = bits(state.ema_params, test_digits[:8], jax.random.key(0))["bpd"]
  other = super_res.downsample(jnp.roll(test_digits[:8], 1, axis=0), 4)
  shuffled = bits(state.ema_params, test_digits[:8], jax.random.key(0), Cond(low_res=other))["bpd"]
  assert np.mean(own) < np.mean(shuffled), (np.mean(own), np.mean(shuffled))
