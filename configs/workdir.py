"""The config a workdir was written with (its config.json, from training or from
`python -m ddpm_jax.convert`), so that a converted checkpoint samples and evaluates from the command
line:

  python -m ddpm_jax.main --mode=sample --config=workdir:runs/adm64 --workdir=runs/adm64
"""

import json
import os

import ml_collections


def get_config(workdir: str | None = None):
  if not workdir:
    raise ValueError("--config=workdir:DIR needs the workdir DIR whose config.json to read.")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No {path}: train there or convert a checkpoint into it first.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
