"""`--mode=represent`: the codes z = E(x0) of a split (representation.split) under the newest
checkpoint's EMA parameters, written to workdir/represent/<split>_<step>.npz as `z` [N, D] and
`labels` [N] (the training data of a diffusion prior, or of anything else that takes vectors)."""

from __future__ import annotations

import os

from absl import logging
import jax
import ml_collections
import numpy as np

from ddpm_jax import families
from ddpm_jax.data import workers
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.runtime import files, parallel


def represent(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the codes of config.representation.split (npz: "z" [N, D] and "labels" [N], the same as
  "embedding" and "label"); returns the npz path."""
  validate_config(config)
  family = families.get_family(config)
  if family.represent is None:
    raise ValueError(
      f"config.family={config.family!r} learns no representation (--mode=represent is "
      "config.family='representation''s)."
    )
  mesh = parallel.make_mesh()
  ema_params, step = sample_lib.restore_ema_params(config, workdir, mesh)
  split = config.representation.split
  images, labels = workers.split_images(config.data, split)
  z = sample_lib.represent_all(family, ema_params, images)
  path = os.path.join(workdir, "represent", f"{split.replace('/', '_')}_{step}.npz")
  if jax.process_index() == 0:
    labels = np.asarray(labels, np.int32)
    # also as "embedding" and "label": a diffusion prior's data (data.dataset="embeddings") and a
    # decoder's data.embedding_key as they are
    files.save_npz(path, z=z, labels=labels, embedding=z, label=labels)
    logging.info("Wrote the codes [%d, %d] of split %r to %s.", *z.shape, split, path)
  return path
