"""Latent diffusion (Rombach et al. 2022): any image family trains and samples in the latent space
of a KL autoencoder, the run in config.latent.autoencoder_workdir (config.family="autoencoder",
trained here or converted from a diffusers AutoencoderKL). The run's data.image_size and
data.num_channels are then the latents' (what the family's network sees); its images are read at
data.image_size·f with the autoencoder's channels (`pixel_data`), encoded on the accelerator batch
by batch ((mean - shift)·scale, or a posterior sample with latent.sample_posterior), and its
samples are decoded to images.

  autoencoder = latent.load_autoencoder(config)   # None where the run is in pixel space
  z = latent.encode(autoencoder, images, key)      # images [B, H, W, C] in [-1, 1] -> latents
  x = latent.decode(autoencoder, z)                # latents -> images in [-1, 1]
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import models, pixels
from ddpm_jax.data import dataset_tool, sources, workers
from ddpm_jax.families.latent import autoencoder_config, input_data, latent_workdir, pixel_data
from ddpm_jax.jobs.train_state import restore_ema_params
from ddpm_jax.models.autoencoder_kl import downsampling_factor
from ddpm_jax.runtime import parallel

__all__ = ["Autoencoder", "decode", "encode", "images_of", "load_autoencoder", "model_batch"]
__all__ += ["encode_dataset", "input_data", "pixel_data", "posterior_key", "RUNS_OWN", "loaded"]


class Autoencoder(NamedTuple):
  """A KL autoencoder run's module and EMA parameters, and whether a run encodes posterior
  samples."""

  model: Any
  params: Any  # {"params": …}
  sample_posterior: bool


def load_autoencoder(config: ml_collections.ConfigDict, mesh=None) -> Autoencoder | None:
  """The autoencoder of a latent run (its newest checkpoint's EMA parameters); None in pixels."""
  workdir = latent_workdir(config)
  if not workdir:
    return None
  ae_config = autoencoder_config(workdir)
  params, step = restore_ema_params(ae_config, workdir, mesh or parallel.make_mesh())
  logging.info("Loaded the autoencoder of %s (step %d's EMA parameters).", workdir, step)
  model_config = copy.deepcopy(ae_config.model)
  if config.latent.scaling_factor is not None:  # e.g. 1 / the autoencoder's eval latent_std
    model_config.scaling_factor = config.latent.scaling_factor
  return Autoencoder(
    models.get_model(model_config),
    {"params": params["params"]},
    config.latent.sample_posterior,
  )


# an `autoencoder=` argument's default: the run's own, loaded by the callee (a job that calls
# several consumers loads it once and passes it: the SD-VAE's checkpoint is ~335 MB)
RUNS_OWN = object()


def loaded(autoencoder, config: ml_collections.ConfigDict, mesh=None) -> Autoencoder | None:
  """`autoencoder`, or the run's own (`load_autoencoder`) where it is RUNS_OWN."""
  return load_autoencoder(config, mesh) if autoencoder is RUNS_OWN else autoencoder


def _draw(autoencoder: Autoencoder, mean, logvar, key):
  """The posterior's mean, or a sample of it (latent.sample_posterior)."""
  if not autoencoder.sample_posterior:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _encode(autoencoder: Autoencoder, params, images, key):
  return _draw(autoencoder, *autoencoder.model.apply(params, images, method="encode_latents"), key)


@functools.partial(jax.jit, static_argnums=0)
def _from_posterior(autoencoder: Autoencoder, params, posterior, key):
  mean, logvar = posterior[:, 0], posterior[:, 1]  # raw, as `encode` gave them
  scaled = autoencoder.model.apply(params, mean, logvar, method="scale_posterior")
  return _draw(autoencoder, *scaled, key)


@functools.partial(jax.jit, static_argnums=0)
def _decode(autoencoder: Autoencoder, params, z):
  return autoencoder.model.apply(params, z, method="decode_latents")


def encode(autoencoder: Autoencoder, images: jax.Array, key: jax.Array) -> jax.Array:
  """Images [B, H, W, C] in [-1, 1] -> latents in the diffusion model's units: the posterior's
  mean, or a sample of it from `key` (latent.sample_posterior, LDM's and DiT's)."""
  return _encode(autoencoder._replace(params=None), autoencoder.params, images, key)


def decode(autoencoder: Autoencoder, z: jax.Array) -> jax.Array:
  """Latents [B, h, w, c] in the diffusion model's units -> images [B, h·f, w·f, C]."""
  return _decode(autoencoder._replace(params=None), autoencoder.params, z)


def model_batch(autoencoder: Autoencoder | None, batch: dict, key: jax.Array) -> dict:
  """A batch of images in [-1, 1] as the family sees it: its "image" encoded where the run is
  latent (`key`: the posterior sample's), or drawn from its cached posteriors "latent" [B, 2, h, w,
  c] (data.dataset="latents"); unchanged in pixel space."""
  if autoencoder is None:
    return batch
  if "latent" in batch:
    batch = dict(batch)
    posterior = batch.pop("latent")
    params = autoencoder.params
    return {
      **batch,
      "image": _from_posterior(autoencoder._replace(params=None), params, posterior, key),
    }
  return {**batch, "image": encode(autoencoder, batch["image"], key)}


def images_of(autoencoder: Autoencoder | None, samples: jax.Array) -> jax.Array:
  """A family's samples as images in [-1, 1]: decoded (and clipped) where the run is latent."""
  if autoencoder is None:
    return samples
  return jnp.clip(decode(autoencoder, samples), -1.0, 1.0)


def posterior_key(seed: int, index: int) -> jax.Array:
  """The key of batch `index`'s posterior samples: fixed by (seed, index), so a resumed run draws
  the latents it would have drawn."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x1A7E47), index)


def encode_dataset(
  workdir: str,
  out: str,
  *,
  dataset: str,
  data_dir: str | None = None,
  split: str = "train",
  num_shards: int = 8,
  batch_size: int = 64,
  image_size: int | None = None,
  resize: str = "bilinear",
  context_key: str = "",
  embedding_key: str = "",
  latent_dtype: str = "float32",
) -> str:
  """Encodes `dataset`'s `split` once by the autoencoder in `workdir` (its EMA parameters) into
  out/<split>: per example its raw posterior (mean, logvar) and its mirror image's, [2, 2, h, w,
  c] (DiT's and fast-DiT's flip augmentation both ways), with the labels and arrays, and in the
  manifest the latent shape, the scale and shift, the autoencoder and the pixel data it encoded
  (what evaluation compares decoded samples with). Images are read at `image_size` (None: the
  size the autoencoder trained on) with its channels; -> the split's directory."""
  ae_config = autoencoder_config(workdir)
  mesh = parallel.make_mesh()
  params, step = restore_ema_params(ae_config, workdir, mesh)
  params = {"params": params["params"]}
  model = models.get_model(ae_config.model)
  image_size = image_size or ae_config.data.image_size
  num_channels = ae_config.model.out_channels
  source = sources.get_source(dataset, split, data_dir, context_key, embedding_key)
  if not source.has_images:
    raise ValueError(f"data.dataset={dataset!r} holds no images to encode.")
  batch_size = -(-batch_size // jax.device_count()) * jax.device_count()  # whole rows per device
  sharding = parallel.data_sharding(mesh)

  @jax.jit
  def posteriors(params, x):  # -> [B, 2 (x, mirrored x), 2 (mean, logvar), h, w, c]
    both = [jnp.stack(model.apply(params, x_, method="encode"), 1) for x_ in (x, x[:, :, ::-1])]
    return jnp.stack(both, 1)

  def examples():
    for start in range(0, len(source), batch_size):
      indices = np.arange(start, min(start + batch_size, len(source)))
      batch = workers.load_examples(source, indices, image_size, num_channels, resize)
      x = np.zeros((batch_size, image_size, image_size, num_channels), np.float32)
      x[: len(indices)] = pixels.from_uint8(batch["image"])  # the last batch padded: one compile
      latents = np.asarray(posteriors(params, jax.device_put(x, sharding)))
      latents = latents[: len(indices)].astype(latent_dtype)
      for row in range(len(indices)):
        arrays = {field: batch[field][row] for field in source.array_keys}
        yield latents[row].tobytes(), int(batch["label"][row]), arrays
      logging.log_every_n_seconds(
        logging.INFO, "Encoded %d / %d images.", 30, start + len(indices), len(source)
      )

  factor = downsampling_factor(ae_config.model.block_out_channels)
  if image_size % factor:
    raise ValueError(f"image_size={image_size} is not a multiple of the autoencoder's {factor}.")
  latent_size = image_size // factor
  classes = getattr(source, "class_index", None)
  manifest = {
    "classes": sorted(classes, key=classes.get)
    if classes
    else list(map(str, range(source.num_classes))),
    "context_key": context_key,
    "embedding_key": embedding_key,
    "latent_shape": [2, 2, latent_size, latent_size, ae_config.model.latent_channels],
    "latent_dtype": latent_dtype,
    "scaling_factor": ae_config.model.scaling_factor,
    "shift_factor": ae_config.model.shift_factor,
    "autoencoder": {"workdir": workdir, "step": step, "model": ae_config.model.to_dict()},
    "pixels": {
      "dataset": dataset,
      "data_dir": data_dir,
      "split": split,
      "image_size": image_size,
      "num_channels": num_channels,
      "resize": resize,
    },
  }
  split_dir = os.path.join(out, sources.split_name(split))
  return dataset_tool.write_split(split_dir, examples(), len(source), num_shards, manifest)
