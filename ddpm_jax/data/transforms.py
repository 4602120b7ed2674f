"""Per-example transforms of uint8 images: centre crops and resizing to the model's size and
channels (no JAX: the decoding worker processes run them)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ddpm_jax import pixels

RESIZE_METHODS = ("bilinear", "adm")


def _centre_crop(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  side = min(h, w)
  return image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]


def adm_centre_crop(image: np.ndarray, image_size: int) -> np.ndarray:
  """guided-diffusion's `center_crop_arr`: BOX halvings while the short side is at least twice
  `image_size`, BICUBIC to a short side of `image_size`, then the centre square."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  while min(pil.size) >= 2 * image_size:
    pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
  scale = image_size / min(pil.size)
  pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
  array = np.asarray(pil).reshape(pil.size[1], pil.size[0], -1)
  top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
  return array[top : top + image_size, left : left + image_size]


def to_model_range(
  image: np.ndarray, image_size: int, num_channels: int, resize: str = "bilinear"
) -> np.ndarray:
  """uint8 [H, W, C] -> float32 [S, S, num_channels] in [-1, 1] (`resize_uint8`)."""
  return pixels.from_uint8(resize_uint8(image, image_size, num_channels, resize))


def resize_uint8(
  image: np.ndarray, image_size: int, num_channels: int, resize: str = "bilinear"
) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [S, S, num_channels]: "bilinear" centre-crops to a square and
  resizes bilinearly; "adm" resizes as guided-diffusion (`adm_centre_crop`)."""
  if image.ndim == 2:
    image = image[..., None]
  if resize == "adm":
    image = adm_centre_crop(image, image_size)
  else:
    image = _centre_crop(image)
  if image.shape[0] != image_size:
    mode = "L" if image.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
    image = np.asarray(pil.resize((image_size, image_size), Image.BILINEAR)).reshape(
      image_size, image_size, -1
    )
  if image.shape[-1] != num_channels:
    if image.shape[-1] == 1:
      image = np.repeat(image, num_channels, axis=-1)
    elif num_channels == 1:
      grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      image = np.round(grey).astype(np.uint8)[..., None]
  return image
