"""The config a workdir was written with (its config.json, from training or from
`python -m ddpm_jax.convert`), so that a converted checkpoint samples and evaluates from the command
line:

  python -m ddpm_jax.main --mode=sample --config=workdir:runs/adm64 --workdir=runs/adm64

A saved config is read onto the current defaults (`from_saved`): a workdir written before a field
existed gets that field's default, so that the code reads every field plainly, and a config.json
written when every config carried every family's block keeps only its own family's. The model
block is read as saved: its fields are the network's hyperparameters (a noisy classifier has fewer
than the U-Net), whose defaults are the Flax module's.
"""

import json

from etils import epath
import ml_collections

from configs import default
from ddpm_jax import families
from ddpm_jax.families import config_validation
from ddpm_jax.runtime.errors import InvalidConfigError


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """configs/default.py's config of the saved family with every value `saved` (a config.json's
  dict) has replacing the default; the fields it lacks keep their defaults, the ones the defaults
  lack are kept, except other families' blocks; the model block as saved."""
  replaced = config_validation.replaced_selectors(ml_collections.ConfigDict(saved))
  if replaced:
    raise InvalidConfigError(" ".join(replaced))
  family = saved["family"]
  other_blocks = families.all_config_blocks() - set(families.config_blocks(family))
  saved = {key: value for key, value in saved.items() if key not in other_blocks}
  sampling = saved.get("sampling", {})
  if family in ("vdm", "ardm") and sampling.get("sampler") == "ddim":
    # written when these families ignored the shared default sampler "ddim": theirs instead
    saved["sampling"] = {k: v for k, v in sampling.items() if k != "sampler"}
  own_samplers = set(families.family_module(family).SAMPLERS)
  # sampler fields no sampler of the family reads (carried over from a config of another family
  # before with_family reset them): their defaults
  saved["sampling"] = {
    k: v
    for k, v in saved.get("sampling", {}).items()
    if k not in config_validation.SAMPLER_FIELDS
    or own_samplers & set(config_validation.SAMPLER_FIELDS[k][1])
  }
  merged = _merged(default.get_config(family).to_dict(), saved)
  if "model" in saved:
    merged["model"] = saved["model"]
  return ml_collections.ConfigDict(merged)


def _merged(defaults: dict, saved: dict) -> dict:
  out = dict(defaults)
  for key, value in saved.items():
    nested = isinstance(value, dict) and isinstance(defaults.get(key), dict)
    out[key] = _merged(defaults[key], value) if nested else value
  return out


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config of `workdir` (local or gs://), read onto the current defaults."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"No {path}: train there or convert a checkpoint into it first.")
  return from_saved(json.loads(path.read_text()))


def get_config(workdir: str | None = None):
  if not workdir:
    raise ValueError("--config=workdir:DIR needs the workdir DIR whose config.json to read.")
  return load(workdir)
