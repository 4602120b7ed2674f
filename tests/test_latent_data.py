"""Cached latents (`python -m ddpm_jax.dataset_tool --encode_with`): a dataset encoded once reads
back, in the same (seed, step) order and with the same flips, as the latents of encoding its images
batch by batch; the run's config is checked against what was encoded. What a latent run changes:
the continuous decoder, samples left unclipped, pixel-only families and options refused."""

import json

import jax
import numpy as np
import pytest

from configs import (
  ardm_default,
  autoencoder_default,
  default,
  edm_default,
  flow_default,
  vdm_default,
)
from ddpm_jax import families
from ddpm_jax.convert import presets
from ddpm_jax.data import loader
from ddpm_jax.families import gaussian
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import latent
from ddpm_jax.jobs.train_state import create_train_state
from ddpm_jax.runtime.errors import InvalidConfigError


@pytest.fixture(scope="module")
def autoencoder_workdir(tmp_path_factory):
  """An autoencoder run of the offline default at its (random) initial weights."""
  workdir = str(tmp_path_factory.mktemp("autoencoder"))
  config = autoencoder_default.get_config()
  state = create_train_state(config, jax.random.key(3), latent.parallel.make_mesh())
  presets.write_workdir(config, state.params, workdir, "test", "random initial weights")
  return workdir


def problem(config) -> str:
  """validate_config's message ("" for a valid config)."""
  try:
    validate_config(config)
  except InvalidConfigError as error:
    return str(error)
  return ""


def latent_config(autoencoder_workdir, data_dir, dataset="latents"):
  config = flow_default.get_config()
  config.latent.autoencoder_workdir = autoencoder_workdir
  config.latent.sample_posterior = False  # the means: comparable without the draws
  config.data.update(dataset=dataset, data_dir=str(data_dir), image_size=4, num_channels=2)
  config.data.update(random_flip=True, num_workers=0)
  config.model.out_channels = 2
  return config


@pytest.mark.slow  # (10 s: encodes the digits twice)
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-2)])
def test_cached_latents_are_the_encoded_images_in_the_same_order(
  autoencoder_workdir, tmp_path, dtype, tolerance
):
  split_dir = latent.encode_dataset(
    autoencoder_workdir, str(tmp_path), dataset="digits", num_shards=3, batch_size=48,
    latent_dtype=dtype,
  )  # fmt: skip
  manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
  assert split_dir == str(tmp_path / "train") and manifest["num_examples"] == 1500
  assert manifest["latent_shape"] == [2, 2, 4, 4, 2] and manifest["scaling_factor"] == 1.0
  assert manifest["pixels"]["dataset"] == "digits" and len(manifest["classes"]) == 10
  config = latent_config(autoencoder_workdir, tmp_path)
  config.latent.scaling_factor = 0.5  # the run's scale applies to the raw posteriors stored
  assert problem(config) == ""
  assert latent.pixel_data(config).dataset == "digits"
  assert latent.pixel_data(config).image_size == 8
  autoencoder = latent.load_autoencoder(config)
  options = dict(split="train", global_batch_size=32, seed=7, start_step=46, num_steps=2)
  cached = loader.batches(latent.input_data(config), **options)
  images = loader.batches(latent.pixel_data(config), **options)  # step 46 spans two epochs
  unflipped = latent.pixel_data(config)
  unflipped.random_flip = False
  key, mirrored = jax.random.key(0), 0
  for from_cache, from_images, as_they_are in zip(
    cached, images, loader.batches(unflipped, **options), strict=True
  ):
    np.testing.assert_array_equal(from_cache["label"], from_images["label"])
    got = latent.model_batch(autoencoder, from_cache, key)["image"]
    want = latent.model_batch(autoencoder, from_images, key)["image"]
    np.testing.assert_allclose(got, want, atol=tolerance)
    mirrored += int(np.sum(np.any(from_images["image"] != as_they_are["image"], axis=(1, 2, 3))))
  assert 0 < mirrored < 64  # both orientations were read


def test_a_run_on_cached_latents_is_checked_against_them(autoencoder_workdir, tmp_path):
  latent.encode_dataset(autoencoder_workdir, str(tmp_path), dataset="digits", split="test")
  config = latent_config(autoencoder_workdir, tmp_path)
  config.data.train_split = "test"
  assert problem(config) == ""
  config.data.image_size = 8
  message = problem(config)
  assert "data.image_size=8" in message and "4×4" in message
  manifest_path = tmp_path / "test" / "manifest.json"
  manifest = json.loads(manifest_path.read_text())
  manifest["autoencoder"]["model"]["num_res_blocks"] = 2  # encoded by another autoencoder
  manifest_path.write_text(json.dumps(manifest))
  config.data.image_size = 4
  message = problem(config)
  assert "encode the data again" in message
  config = latent_config(None, tmp_path)
  config.latent.sample_posterior = True
  message = problem(config)
  assert "latent.autoencoder_workdir" in message
  config = latent_config(autoencoder_workdir, tmp_path / "nowhere")
  config.data.train_split = "test"
  message = problem(config)
  assert "encode the dataset first" in message


def in_latents(config, autoencoder_workdir):
  config.latent.autoencoder_workdir = autoencoder_workdir
  config.data.update(image_size=4, num_channels=2)
  config.model.update(out_channels=2, ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
  return config


@pytest.mark.slow  # (12 s: four samplers)
def test_a_latent_run_is_continuous_and_unclipped(autoencoder_workdir):
  """In latents the Gaussian family's VLB ends in the continuous decoder, a flow's and an EDM
  model's samples are not clipped to the pixels' [-1, 1], and what models 8-bit pixels or clips
  x̂0 to their range is refused by name."""
  config = in_latents(default.get_config(), autoencoder_workdir)
  assert gaussian.make_diffusion(config).decoder == "continuous"
  assert gaussian.make_diffusion(default.get_config()).decoder == "discretized"
  assert "sampling.clip_denoised=True" in problem(config)
  config.sampling.clip_denoised = False
  assert problem(config) == ""
  for get_config in (vdm_default.get_config, ardm_default.get_config):
    assert "models 8-bit pixels" in problem(in_latents(get_config(), autoencoder_workdir))
  for get_config in (flow_default.get_config, edm_default.get_config):
    for config in (get_config(), in_latents(get_config(), autoencoder_workdir)):
      config.sampling.num_steps = 2
      family = families.get_family(config)
      params = family.init_params(jax.random.key(0))
      samples = family.make_sampler(8)(params, jax.random.key(1))
      clipped = latent.latent_workdir(config) is None
      assert (float(np.abs(samples).max()) <= 1.0) == clipped, config.family
