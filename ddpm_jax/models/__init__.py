"""Flax models. `get_model(config.model)` builds the module named by `config.model.name`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ddpm_jax.models.autoencoder_kl import AutoencoderKL
from ddpm_jax.models.classifier import NoisyClassifier
from ddpm_jax.models.dit import DiT
from ddpm_jax.models.layers import EMBEDDINGS
from ddpm_jax.models.unet import UNet

MODELS = {"unet": UNet, "classifier": NoisyClassifier, "dit": DiT, "autoencoder_kl": AutoencoderKL}
EMBEDDING_TYPES = tuple(EMBEDDINGS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# model.dtype="auto": bfloat16 compute (float32 parameters) on accelerators, float32 on CPUs
COMPUTE_DTYPES = (*DTYPES, "auto")


def compute_dtype(name: str):
  """The compute dtype of a model.dtype name ("auto": bfloat16 on a GPU or TPU, else float32)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  if name not in DTYPES:
    raise ValueError(f"Unknown model dtype {name!r}; known: {', '.join(COMPUTE_DTYPES)}.")
  return DTYPES[name]


def remat_setting(remat: bool | None) -> bool | str:
  """A module's `remat` for model.remat (None: "products" on a GPU or TPU, where activation memory
  limits the batch, else False; layers.rematerialised)."""
  if remat is None:
    return False if jax.default_backend() == "cpu" else "products"
  if not isinstance(remat, bool):
    raise ValueError(f"model.remat must be True, False or None (auto); got {remat!r}.")
  return remat


def get_model(model_config):
  """The module `model_config.name` with every other field of `model_config` as its hyperparameter.

  `dtype` is a name ("float32", "bfloat16", "auto"); sequences may be tuples or lists.
  """
  kwargs = dict(model_config)
  name = kwargs.pop("name", "unet")
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(MODELS)}.")
  cls = MODELS[name]
  valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - valid)
  if unknown:
    raise ValueError(
      f"config.model has fields {unknown} that {cls.__name__} does not take; valid: "
      f"{sorted(valid)}."
    )
  if "dtype" in kwargs:
    kwargs["dtype"] = compute_dtype(kwargs["dtype"])
  if "remat" in kwargs:
    kwargs["remat"] = remat_setting(kwargs["remat"])
  for key in (
    "ch_mult",
    "attn_resolutions",
    "fourier_features",
    "fir_kernel",
    "block_out_channels",
  ):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  return cls(**kwargs)
