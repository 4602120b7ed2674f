"""Model families, chosen once by `config.family`: each is one module with `validate(config)` and
`build(config) -> Family` (base.py has the interface). Adding one is a module and a line in
FAMILIES."""

from __future__ import annotations

import importlib
import types
from typing import Callable

import ml_collections

from ddpm_jax.families.base import Cond, Family, StepKeys, step_keys

# config.family -> its module under ddpm_jax/families/.
FAMILIES = {
  "gaussian": "gaussian",  # DDPM, Improved DDPM, ADM
  "classifier": "classifier",  # ADM's noisy classifier, for classifier guidance
  "score_sde": "score_sde",  # VP / subVP / VE score SDEs, NCSN++
  "vdm": "vdm",  # Variational Diffusion Models
  "ardm": "ardm",  # order-agnostic Autoregressive Diffusion Models
  "super_res": "super_res",  # ADM-U: Gaussian diffusion given a low-resolution image
  "edm": "edm",  # EDM: the preconditioned denoiser D(x; σ), σ-space samplers
  # an encoder E(x0) -> z learned with a denoiser conditioned on z (diffusion autoencoder)
  "representation": "representation",
  "prior": "prior",  # unCLIP's diffusion prior over embeddings
  "flow": "flow",  # flow matching / rectified flow: the velocity of x_t = α_t x0 + σ_t ε
  "autoencoder": "autoencoder",  # latent diffusion's KL autoencoder
  "distill": "distill",  # few-step students of a trained model (progressive distillation)
}


def family_module(name: str) -> types.ModuleType:
  if name not in FAMILIES:
    raise ValueError(f"Unknown config.family {name!r}; known: {', '.join(FAMILIES)}.")
  return importlib.import_module(f"ddpm_jax.families.{FAMILIES[name]}")


def config_blocks(name: str) -> dict[str, Callable[[], ml_collections.ConfigDict]]:
  """The config blocks family `name` reads besides the shared ones (`config.<block>`), each with
  the function that builds its defaults (its module's CONFIG_BLOCKS)."""
  return getattr(family_module(name), "CONFIG_BLOCKS", {})


def all_config_blocks() -> set[str]:
  """Every family's own blocks: a config carries those of its family only."""
  return {block for name in FAMILIES for block in config_blocks(name)}


def completed(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (in place) with the fields its family reads from its data filled in (the module's
  `complete`: the prior's embedding width and classes from data.path); as it is for the others."""
  complete = getattr(family_module(config.family), "complete", None)
  return config if complete is None else complete(config)


def get_family(config: ml_collections.ConfigDict) -> Family:
  """The family `config.family` built from `config` (validate the config first)."""
  return family_module(config.family).build(config)


__all__ = [
  "FAMILIES",
  "Cond",
  "Family",
  "StepKeys",
  "all_config_blocks",
  "completed",
  "config_blocks",
  "family_module",
  "get_family",
  "step_keys",
]
