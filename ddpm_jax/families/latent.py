"""Which space a run works in (ddpm_jax/jobs/latent.py encodes and decodes): its
config.latent.autoencoder_workdir's autoencoder, read from that workdir's config.json, fixes the
images' size and channels behind the latents the family sees."""

from __future__ import annotations

import copy
import functools
import json
import os

import jax.numpy as jnp
import ml_collections

from ddpm_jax.data import sources
from ddpm_jax.families.base import as_json
from ddpm_jax.models.autoencoder_kl import downsampling_factor


def latent_workdir(config: ml_collections.ConfigDict) -> str | None:
  """config.latent.autoencoder_workdir; None: the run is in pixel space."""
  return config.get("latent", {}).get("autoencoder_workdir")


@functools.cache
def autoencoder_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the autoencoder run in `workdir` (read once)."""
  from configs import workdir as workdir_configs  # (configs imports the families)

  config = workdir_configs.load(workdir)
  if config.get("family") != "autoencoder":
    raise ValueError(
      f"config.latent.autoencoder_workdir={workdir!r} trained config.family="
      f"{config.get('family')!r}, not an autoencoder (config.family='autoencoder')."
    )
  return config


# config.latent's other fields and their values where no autoencoder reads them
_PIXEL_SPACE_VALUES = {"sample_posterior": True, "scaling_factor": None}


def clip_samples(config: ml_collections.ConfigDict):
  """-> finish(x): a pixel-space run's samples clipped to [-1, 1]; a latent run's as they are
  (their decoded images are clipped: jobs.latent.images_of)."""
  if latent_workdir(config):
    return lambda x: x
  return lambda x: jnp.clip(x, -1.0, 1.0)


def latent_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A latent run's data.num_channels must be its autoencoder's latent channels; a run in pixel
  space leaves config.latent's other fields alone."""
  workdir = latent_workdir(config)
  if not workdir:
    if config.data.dataset == "latents":
      return [
        "data.dataset='latents' needs the autoencoder that encoded them: set "
        "latent.autoencoder_workdir."
      ]
    latent = config.get("latent", {})
    return [
      f"latent.{name}={latent[name]!r} is read with latent.autoencoder_workdir only (unset)."
      for name, neutral in _PIXEL_SPACE_VALUES.items()
      if latent.get(name, neutral) != neutral
    ]
  try:
    model = autoencoder_config(workdir).model
  except (FileNotFoundError, ValueError) as error:
    return [f"latent.autoencoder_workdir: {error}"]
  if config.data.num_channels != model.latent_channels:
    return [
      f"data.num_channels={config.data.num_channels} must be the latents' channels, "
      f"{model.latent_channels} (the autoencoder in latent.autoencoder_workdir={workdir!r})."
    ]
  return cached_latents_problems(config.data, model) if config.data.dataset == "latents" else []


def cached_latents_problems(
  data: ml_collections.ConfigDict, model: ml_collections.ConfigDict
) -> list[str]:
  """Cached latents were encoded by an autoencoder of the run's architecture (`model`), at the
  run's latent size."""
  try:
    manifest = cached_latents_manifest(data)
  except (FileNotFoundError, ValueError) as error:
    return [f"data.data_dir: {error}"]
  h, w = manifest["latent_shape"][2:4]
  if (h, w) != (data.image_size, data.image_size):
    return [f"data.image_size={data.image_size}, but data.data_dir holds latents of {h}×{w}."]

  # the stored posteriors are raw: the run's own scale and shift apply
  def unit_free(model):
    return {k: v for k, v in as_json(model).items() if k not in ("scaling_factor", "shift_factor")}

  encoder = manifest["autoencoder"]
  if unit_free(encoder["model"]) != unit_free(model):
    return [
      f"data.data_dir holds latents of the autoencoder in {encoder['workdir']!r}, whose model "
      "differs from latent.autoencoder_workdir's: set that workdir, or encode the data again."
    ]
  return []


def cached_latents_manifest(data: ml_collections.ConfigDict) -> dict:
  """The manifest of data.dataset="latents"'s training split (`dataset_tool --encode_with`)."""
  path = os.path.join(data.data_dir or "", sources.split_name(data.train_split), "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No {path}: encode the dataset first (python -m ddpm_jax.dataset_tool --encode_with="
      "AUTOENCODER_WORKDIR --out=DATA_DIR)."
    )
  with open(path) as f:
    manifest = json.load(f)
  if "latent_shape" not in manifest:
    raise ValueError(f"{path} describes packed images, not latents (data.dataset='array_record').")
  return manifest


def input_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data the input pipeline reads: cached latents as they are, else `pixel_data`."""
  return config.data if config.data.dataset == "latents" else pixel_data(config)


def pixel_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.data with the images' size and channels where the run is latent (the images the
  evaluation compares samples with; the data the input pipeline reads where it encodes them), and
  cached latents' images (the dataset their manifest names, at its splits); else config.data."""
  workdir = latent_workdir(config)
  if not workdir:
    return config.data
  model = autoencoder_config(workdir).model
  data = copy.deepcopy(config.data)
  data.image_size = config.data.image_size * downsampling_factor(model.block_out_channels)
  data.num_channels = model.out_channels
  if config.data.dataset == "latents":
    encoded = cached_latents_manifest(config.data)["pixels"]
    spec = sources.dataset_spec(encoded["dataset"])
    data.dataset, data.data_dir, data.resize = (
      encoded[k] for k in ("dataset", "data_dir", "resize")
    )
    data.train_split, data.eval_split = encoded["split"], spec.eval_split
  return data
