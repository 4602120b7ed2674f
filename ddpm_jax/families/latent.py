"""Which space a run works in (ddpm_jax/jobs/latent.py encodes and decodes): its
config.latent.autoencoder_workdir's autoencoder, read from that workdir's config.json, fixes the
images' size and channels behind the latents the family sees."""

from __future__ import annotations

import copy
import functools

import ml_collections

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


def latent_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A latent run's data.num_channels must be its autoencoder's latent channels; a run in pixel
  space leaves config.latent's other fields alone."""
  workdir = latent_workdir(config)
  if not workdir:
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
  return []


def pixel_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.data with the images' size and channels where the run is latent (the data the input
  pipeline and the evaluation read), else config.data itself."""
  workdir = latent_workdir(config)
  if not workdir:
    return config.data
  model = autoencoder_config(workdir).model
  data = copy.deepcopy(config.data)
  data.image_size = config.data.image_size * downsampling_factor(model.block_out_channels)
  data.num_channels = model.out_channels
  return data
