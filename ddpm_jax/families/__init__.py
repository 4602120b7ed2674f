"""Model families, chosen once by `config.family`: each is one module with `validate(config)` and
`build(config) -> Family` (base.py has the interface). Adding one is a module and a line in
FAMILIES."""

from __future__ import annotations

import importlib
import types

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
}


def family_module(name: str) -> types.ModuleType:
  if name not in FAMILIES:
    raise ValueError(f"Unknown config.family {name!r}; known: {', '.join(FAMILIES)}.")
  return importlib.import_module(f"ddpm_jax.families.{FAMILIES[name]}")


def config_block(name: str) -> str | None:
  """The config block family `name` owns (`config.<block>`, built by its module's
  `default_config()`), None for a family without one."""
  return getattr(family_module(name), "CONFIG_BLOCK", None)


def get_family(config: ml_collections.ConfigDict) -> Family:
  """The family `config.family` built from `config` (validate the config first)."""
  return family_module(config.family).build(config)


__all__ = [
  "FAMILIES",
  "Cond",
  "Family",
  "StepKeys",
  "config_block",
  "family_module",
  "get_family",
  "step_keys",
]
