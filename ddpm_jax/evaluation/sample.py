"""`--mode=sample`: N samples from the newest checkpoint's EMA parameters, to `samples_<step>.npz`
and a PNG.

Every family samples with its own sampler (families/*.py), chosen and tuned by config.sampling: for
the Gaussian family sampler ("ddpm" | "ddim" | "dpm_solver"), num_steps (None: all T for ddpm, 50
for ddim, 20 for dpm_solver), eta (DDIM), guidance_scale (classifier-free, class-conditional
models), classifier_workdir and classifier_scale (classifier guidance by a run of
config.family="classifier"), clip_denoised; score SDEs sample by predictor-corrector (snr), VDMs
ancestrally on num_steps (default 1000) equal steps of t, ARDMs in a random order in num_steps
(default D) parallel steps. num_samples and batch_size for all.
"""

from __future__ import annotations

import json
import os

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from ddpm_jax import checkpoint, families, files, parallel, pixels
from ddpm_jax.config_validation import validate_config
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.train_state import abstract_train_state, run_rngs


def make_sample_fn(family: families.Family, batch_size: int, mesh, **sampler_options):
  """The family's sampler jitted over `mesh`: (params, rng, labels [B] | None, guide_params=None) ->
  samples [B, H, W, C] sharded along "data". x_T is drawn at the global shape inside the jit, so
  sharding the output shards the whole loop by batch."""
  if family.make_sampler is None:
    raise ValueError(f"config.family={family.name!r} does not generate images.")
  if batch_size % mesh.size:
    raise ValueError(f"A sample batch of {batch_size} is not divisible by the {mesh.size} devices.")
  return jax.jit(
    family.make_sampler(batch_size, **sampler_options), out_shardings=parallel.data_sharding(mesh)
  )


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str, mesh):
  """-> (EMA parameters, step) of the newest readable checkpoint of the run `config` in
  `workdir`."""
  ckpt = checkpoint.Checkpointer(workdir)
  state, step = ckpt.restore_latest(abstract_train_state(config, mesh))
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first (--mode=train).")
  return state.ema_params, step


def load_classifier(workdir: str, mesh):
  """The noisy classifier trained in `workdir` (its config.json and newest checkpoint) -> (module,
  params)."""
  classifier_config = ml_collections.ConfigDict(
    json.loads((epath.Path(workdir) / "config.json").read_text())
  )
  if classifier_config.get("family") != "classifier":
    raise ValueError(
      f"{workdir} trained config.family={classifier_config.get('family')!r}, not a noisy "
      "classifier (config.family='classifier')."
    )
  params, _ = restore_ema_params(classifier_config, workdir, mesh)
  return families.get_family(classifier_config).model, params


def generate(
  config: ml_collections.ConfigDict,
  ema_params,
  step: int,
  num_samples: int,
  mesh,
  workdir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """`num_samples` samples of the run `config` at `step` in batches of `sampling.batch_size`, with
  progress logs -> (uint8 images [N, H, W, C], labels [N]; zeros for an unconditional, unguided
  model).
  `workdir` holds what the family's sampler reads there (an ARDM's loss components for parallel
  decoding)."""
  sampling_config = config.sampling
  batch = sampling_config.batch_size
  guide, guide_params = None, None
  if sampling_config.classifier_workdir and sampling_config.classifier_scale:
    guide, guide_params = load_classifier(sampling_config.classifier_workdir, mesh)
  sample_fn = make_sample_fn(
    families.get_family(config), batch, mesh, progress=True, guide=guide, workdir=workdir
  )
  rng = jax.random.fold_in(run_rngs(config.seed)["sample"], step)
  num_classes = guide.num_classes if guide is not None else config.model.get("num_classes")
  all_images, all_labels = [], []
  for i in range(-(-num_samples // batch)):
    batch_rng = jax.random.fold_in(rng, i)
    labels = None
    if num_classes:
      labels = jax.random.randint(jax.random.fold_in(batch_rng, 1), (batch,), 0, num_classes)
      all_labels.append(np.asarray(labels))
    x = sample_fn(ema_params, batch_rng, labels, guide_params)
    all_images.append(pixels.to_uint8(parallel.to_host(x)))
    logging.info("Sampled %d / %d.", min((i + 1) * batch, num_samples), num_samples)
  images = np.concatenate(all_images)[:num_samples]
  labels = (
    np.concatenate(all_labels)[:num_samples] if all_labels else np.zeros(len(images), np.int32)
  )
  return images, labels


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes workdir/samples/samples_<step>.npz (uint8 "images" [N, H, W, C], int "labels" [N]) and a
  PNG grid of the first 64; returns the npz path."""
  validate_config(config)
  mesh = parallel.make_mesh()
  ema_params, step = restore_ema_params(config, workdir, mesh)
  images, labels = generate(config, ema_params, step, config.sampling.num_samples, mesh, workdir)
  out_dir = os.path.join(workdir, "samples")
  path = os.path.join(out_dir, f"samples_{step}.npz")
  if jax.process_index() == 0:
    files.save_npz(path, images=images, labels=labels)
    image_utils.save_png(
      image_utils.grid_uint8(pixels.from_uint8(images[:64])),
      os.path.join(out_dir, f"samples_{step}.png"),
    )
    logging.info("Wrote %d samples to %s.", len(images), path)
  return path
