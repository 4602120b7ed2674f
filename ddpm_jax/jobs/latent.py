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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import models
from ddpm_jax.families.latent import autoencoder_config, latent_workdir, pixel_data
from ddpm_jax.jobs.train_state import restore_ema_params
from ddpm_jax.runtime import parallel

__all__ = ["Autoencoder", "decode", "encode", "images_of", "load_autoencoder", "model_batch"]
__all__ += ["pixel_data", "posterior_key"]


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
  params, _ = restore_ema_params(ae_config, workdir, mesh or parallel.make_mesh())
  model_config = copy.deepcopy(ae_config.model)
  if config.latent.scaling_factor is not None:  # e.g. 1 / the autoencoder's eval latent_std
    model_config.scaling_factor = config.latent.scaling_factor
  return Autoencoder(
    models.get_model(model_config),
    {"params": params["params"]},
    config.latent.sample_posterior,
  )


@functools.partial(jax.jit, static_argnums=0)
def _encode(autoencoder: Autoencoder, params, images, key):
  mean, logvar = autoencoder.model.apply(params, images, method="encode_latents")
  if not autoencoder.sample_posterior:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


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
  latent (`key`: the posterior sample's), unchanged in pixel space."""
  if autoencoder is None:
    return batch
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
