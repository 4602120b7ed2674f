"""ADM-U super-resolution (Dhariwal & Nichol 2021, §D; guided-diffusion's SuperResModel): the
Gaussian family's diffusion, losses and samplers on the high-resolution image, with the U-Net given
the low-resolution image bilinearly upsampled beside x_t. Training downsamples each batch
(`super_res.downsample`, area averaging as guided-diffusion's super_res_train); samples take the
low-resolution images as `Cond.low_res` [B, s, s, C] in [-1, 1] (jobs/sample.py: a base
model's samples, a file, or the held-out split's images downsampled); bits/dim is the VLB of the
data given its own downsampled image.

config.super_res.low_res_size is s; the rest is config.diffusion / config.sampling as for the
Gaussian family (classifier-free guidance over class labels, the low-res image kept).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ddpm_jax import super_res
from ddpm_jax.families import base, gaussian


def default_config() -> ml_collections.ConfigDict:
  """config.super_res: the input size and where --mode=sample / eval take the inputs from."""
  super_res_config = ml_collections.ConfigDict()
  super_res_config.low_res_size = 4  # s: the model upsamples s×s images to data.image_size
  # what --mode=sample / eval upsample: the samples of a base model's workdir, generated first (a
  # cascade), or an npz of uint8 "images" [+ "labels"] (guided-diffusion's "arr_0" [+ "arr_1"]);
  # neither: data.eval_split's images, downsampled
  super_res_config.low_res_workdir = config_dict.placeholder(str)
  super_res_config.low_res_file = config_dict.placeholder(str)
  return super_res_config


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"diffusion": gaussian.diffusion_config, "super_res": default_config}
SAMPLERS = gaussian.SAMPLERS  # the Gaussian family's, on the high-resolution image


# config.super_res's numeric ranges (config_validation.RANGES' form)
RANGES = {"super_res.low_res_size": (0, True, None, False)}


def validate(config: ml_collections.ConfigDict) -> list[str]:
  problems = gaussian.validate(config, embeddings=False) + base.no_context_problems(config)
  size, low_res_size = config.data.image_size, config.super_res.low_res_size
  if low_res_size <= 0 or low_res_size >= size or size % low_res_size:
    problems.append(
      f"super_res.low_res_size={low_res_size} must divide data.image_size={size} and be smaller."
    )
  if config.sampling.guidance_scale and not config.model.get("num_classes"):
    problems.append(
      "sampling.guidance_scale guides a super-resolution model towards class labels: this one "
      "has model.num_classes=0."
    )
  return problems


def low_res_conditioning(config: ml_collections.ConfigDict) -> gaussian.Conditioning:
  """The low-resolution image [B, s, s, C] beside x_t (SuperResModel's input)."""
  low_res_size = config.super_res.low_res_size
  of_images = lambda x0: super_res.downsample(x0, low_res_size)

  def dummy():
    x, _ = base.dummy_inputs(config.data)
    return super_res.downsample(x, low_res_size)

  return gaussian.Conditioning(
    field="low_res",
    active=True,
    of_batch=lambda keys, batch: of_images(batch["image"]),
    of_images=of_images,
    unet_inputs=lambda x_t, low_res: (super_res.model_input(x_t, low_res), {}),
    null=lambda low_res: low_res,
    dummy=dummy,
  )


def build(config: ml_collections.ConfigDict) -> base.Family:
  return gaussian.build(config, (low_res_conditioning(config),))
