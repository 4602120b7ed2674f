"""--mode=edit and --mode=interpolate on a tiny run of the offline default (the digits), and
colorization on a tiny colour run: the outputs written, the known part kept, the command line."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from ddpm_jax import pixels, train
from ddpm_jax.jobs import edit
from helpers import REPO, tiny_config


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits")
  config = tiny_config(num_train_steps=2)
  config.training.checkpoint_every_steps = 2
  train.train_and_evaluate(config, str(workdir))
  config.edit.num_images = 4
  return config, str(workdir)


def test_inpainting_from_the_command_line_keeps_the_known_pixels(digits_run):
  _, workdir = digits_run
  # the run's own config.json, with RePaint's resampling and a ddpm sampler on 5 steps
  subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.main",
      "--mode=edit",
      f"--config=workdir:{workdir}",
      f"--workdir={workdir}",
      "--config.edit.num_images=4",
      "--config.edit.resample=2",
      "--config.edit.jump=2",
      "--config.sampling.sampler=ddpm",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  out = np.load(os.path.join(workdir, "edits", "inpaint_2.npz"))
  inputs, results, conditions = out["inputs"], out["results"], out["conditions"]
  assert inputs.shape == results.shape == conditions.shape == (4, 8, 8, 1)
  known = conditions == 255  # the built-in mask: the middle 4×4 unknown
  assert known.sum() == 4 * (64 - 16)
  np.testing.assert_array_equal(results[known], inputs[known])
  assert np.any(results[~known] != inputs[~known])
  grid = np.asarray(Image.open(os.path.join(workdir, "edits", "inpaint_2.png")))
  assert grid.shape[1] > grid.shape[0] / 2  # 4 rows of 3 columns


def test_sdedit_spans_the_input_and_a_sample_and_a_mask_file_is_read(digits_run, tmp_path):
  config, workdir = digits_run
  config = config.copy_and_resolve_references()
  config.edit.task, config.edit.strength = "sdedit", 1e-3  # no step left: the input itself
  out = np.load(edit.edit(config, workdir))
  np.testing.assert_array_equal(out["results"], out["inputs"])
  config.edit.strength = 1.0
  assert np.any(np.load(edit.edit(config, workdir))["results"] != out["inputs"])
  # inputs and a mask from files: the left half known
  images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
  np.savez(tmp_path / "inputs.npz", images=images)
  mask = np.zeros((8, 8), np.uint8)
  mask[:, :4] = 255
  Image.fromarray(mask).save(tmp_path / "mask.png")
  config.edit.task, config.edit.input_file = "inpaint", str(tmp_path / "inputs.npz")
  config.edit.mask_file = str(tmp_path / "mask.png")
  config.sampling.sampler = "dpm_solver"  # a multistep sampler
  results = np.load(edit.edit(config, workdir))["results"]
  np.testing.assert_array_equal(results[:, :, :4], images[:, :, :4])
  config.sampling.sampler, config.edit.task = "ddim", "colorize"
  with pytest.raises(ValueError, match="colour data"):
    edit.edit(config, workdir)


def test_interpolation_decodes_the_encoded_endpoints(digits_run, tmp_path):
  from ddpm_jax import families
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.runtime import parallel

  config, workdir = digits_run
  config = config.copy_and_resolve_references()
  config.interpolate.num_frames = 5
  drawn = np.load(edit.interpolate(config, workdir))
  assert drawn["frames"].shape == (5, 8, 8, 1) and "inputs" not in drawn
  images, _ = sample_lib.eval_split_images(config, 2)
  np.savez(tmp_path / "pair.npz", images=images)
  config.interpolate.input_file = str(tmp_path / "pair.npz")
  out = np.load(edit.interpolate(config, workdir))
  assert out["frames"].shape == (5, 8, 8, 1) and out["alphas"][[0, -1]].tolist() == [0.0, 1.0]
  # the end frames are decode(encode(input)): the DDIM round trip (its accuracy against the exact
  # ODE: tests/test_sampling.py)
  params, _ = sample_lib.restore_ema_params(config, workdir, parallel.make_mesh())
  encode, decode = families.get_family(config).make_latent_codec(5)
  x = jnp.asarray(pixels.from_uint8(images))
  round_trip = pixels.to_uint8(np.asarray(jax.jit(lambda p, x: decode(p, encode(p, x)))(params, x)))
  np.testing.assert_allclose(out["frames"][[0, -1]], round_trip, atol=1)
  assert os.path.isfile(os.path.join(workdir, "edits", "interpolate_2.png"))


def test_colorization_keeps_the_grey_value_of_colour_images(tmp_path):
  rng = np.random.default_rng(1)
  for i in range(8):
    (tmp_path / "images" / "test").mkdir(parents=True, exist_ok=True)
    pixels_rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels_rgb).save(tmp_path / "images" / "test" / f"{i}.png")
  config = tiny_config(num_train_steps=2, batch_size=8)
  config.data.dataset, config.data.data_dir = "image_folder", str(tmp_path / "images")
  config.data.num_channels = config.model.out_channels = 3
  config.training.checkpoint_every_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))
  config.edit.task, config.edit.num_images, config.edit.resample = "colorize", 2, 2
  out = np.load(edit.edit(config, str(tmp_path / "run")))
  grey = pixels.from_uint8(out["inputs"]).mean(-1)
  got = pixels.from_uint8(out["results"]).mean(-1)
  # exact before each channel is rounded to 8 bits, where none was clipped to [0, 255]
  inside = np.all((out["results"] > 0) & (out["results"] < 255), axis=-1)
  assert inside.mean() > 0.5
  np.testing.assert_allclose(got[inside], grey[inside], atol=1.5 / 127.5)
  assert np.all(out["conditions"][..., 0] == out["conditions"][..., 1])
  assert np.any(out["results"][..., 0] != out["results"][..., 1])


def test_every_score_sde_sampler_is_chosen_by_the_config_and_edits(tmp_path):
  from ddpm_jax import editing, families, sde
  from ddpm_jax.families import config_validation

  config = tiny_config(family="score_sde")
  config.sde.type, config.sde.num_scales = "ve", 50
  config.sampling.sampler, config.sampling.num_steps = "pc", 3
  config.sampling.predictor, config.sampling.corrector = "ancestral", "annealed_langevin"
  config.sampling.n_corrector, config.sampling.ode_tolerance = 2, 1e-2
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  rng = jax.random.key(1)
  got = jax.jit(family.make_sampler(2))(params, rng, None)
  # the same as the library's PC sampler on the SDE discretised on sampling.num_steps
  s = sde.VESDE(config.sde.sigma_min, config.sde.sigma_max, N=3)
  score_fn = sde.model_score_fn(s, lambda x, t: family.model.apply(params, x, t), "t")
  want = jax.jit(
    lambda: sde.pc_sample(
      s, score_fn, rng, got.shape, "ancestral", "annealed_langevin", config.sampling.snr, 2
    )
  )()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for sampler in ("ode", "annealed_langevin", "euler_ancestral"):
    config.sampling.sampler = sampler
    config_validation.validate_config(config)
    x = jax.jit(families.get_family(config).make_sampler(2))(params, rng, None)
    assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x)), sampler
  # editing on predictor-corrector sampling: the known pixels kept
  config.sampling.sampler = "pc"
  trajectory_fn = families.get_family(config).make_trajectory()
  x_known = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  mask = editing.region_mask("right", 8)
  out = jax.jit(lambda p: editing.inpaint_along(trajectory_fn(p), rng, x_known, mask, resample=2))(
    params
  )
  np.testing.assert_array_equal(np.asarray(out)[:, :, :4], np.asarray(x_known)[:, :, :4])
  for change, message in [
    (dict(sampler="annealed_langevin"), "VE SDE"),
    (dict(predictor="ancestral"), "sub-VP"),
    (dict(num_steps=10), "exceed sde.beta_max"),
    (dict(sampler="ddim"), "samples with sampling.sampler in pc, ode"),
  ]:
    bad = config.copy_and_resolve_references()
    bad.sde.type = "subvp"
    bad.sampling.update(change)
    with pytest.raises(ValueError, match=message):
      config_validation.validate_config(bad)
  config.sampling.sampler = "ode"
  with pytest.raises(ValueError, match="without a fixed grid"):
    families.get_family(config).make_trajectory()
