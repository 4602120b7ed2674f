"""`--mode=sample`: N samples from the newest checkpoint's EMA parameters, to `samples_<step>.npz` and a PNG.

config.sampling: sampler ("ddpm" | "ddim" | "dpm_solver"), num_steps (None: all T for ddpm, 50 for ddim, 20 for
dpm_solver), eta (DDIM), guidance_scale (classifier-free, class-conditional models), classifier_workdir and
classifier_scale (classifier guidance with a noisy classifier trained by `model.name="classifier"`),
num_samples, batch_size, clip_denoised. Score SDEs sample by predictor-corrector (snr), VDMs ancestrally on
num_steps (default 1000) equal steps of t, ARDMs in a random order in num_steps (default D) parallel steps.
"""
from __future__ import annotations

import json
import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import ardm, checkpoint, diffusion, files, models, parallel, sampling, sde, vdm
from ddpm_jax.evaluation import images as image_utils

SAMPLERS = ("ddpm", "ddim", "dpm_solver")


def ardm_loss_components_path(workdir: str) -> str:
  return os.path.join(workdir, "ardm_loss_components.npz")


def ardm_decoding_plan(config: ml_collections.ConfigDict, workdir: str | None) -> np.ndarray | None:
  """For an ARDM with sampling.num_steps = S below D: the step boundaries by dynamic programming over the loss
  components that --mode=eval saved in workdir (or, without them, S steps of equal size). None: D steps."""
  d = config.data.image_size**2 * config.data.num_channels
  budget = config.sampling.num_steps or d
  if budget >= d:
    return None
  path = ardm_loss_components_path(workdir) if workdir else None
  if path and epath.Path(path).exists():
    return ardm.parallel_decoding_plan(files.load_npz(path)["loss_components"], budget)
  logging.warning("No ARDM loss components at %s (run --mode=eval first): decoding in %d equal steps.", path, budget)
  return np.linspace(0, d, budget + 1).round().astype(np.int32)


def make_sample_fn(config: ml_collections.ConfigDict, d: diffusion.GaussianDiffusion, model, batch_size: int,
                   mesh, classifier=None, progress: bool = False, ardm_plan: np.ndarray | None = None):
  """Jitted (params, rng, labels [B] | None, classifier_params=None) -> samples [B, H, W, C] with the sampler of
  `config.sampling`, the batch sharded over `mesh`; with `classifier` (a noisy classifier module) and its
  params, classifier-guided; an ARDM decodes by `ardm_plan` (default: one variable per step)."""
  c = config.sampling
  if c.sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampling.sampler {c.sampler!r}; valid: {', '.join(SAMPLERS)}.")
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)

  from ddpm_jax import train  # the score SDE of the config
  score_sde = train.make_sde(config)

  def sample(params, rng, labels, classifier_params=None):
    if config.ardm.enabled:
      values, _ = ardm.sample(train.ardm_logits_fn(config, model, params), rng, shape, ardm_plan)
      return train.ardm_images(config, values)
    if config.vdm.schedule:  # ancestral sampling of the continuous-time VDM on num_steps equal steps
      eps_fn = train.vdm_eps_fn(config, model, params["unet"], labels)
      return vdm.sample(params["schedule"], eps_fn, rng, shape, num_steps=c.num_steps or 1000)
    if score_sde is not None:  # predictor-corrector sampling of the score SDE
      score_fn = sde.model_score_fn(score_sde, lambda x_t, t: model.apply(params, x_t, t), config.sde.conditioning)
      return sde.pc_sample(score_sde, score_fn, rng, shape, snr=c.snr)
    cond_fn = None
    if classifier is not None:
      log_prob_fn = lambda x_t, t: jax.nn.log_softmax(classifier.apply(classifier_params, x_t, t))
      cond_fn = sampling.classifier_guidance(log_prob_fn, labels, c.classifier_scale)
      labels = labels if model.num_classes else None  # an unconditional diffusion model ignores them
    conditional = lambda x_t, t: model.apply(params, x_t, t, labels)
    model_fn = conditional
    if labels is not None and c.guidance_scale:
      unconditional = lambda x_t, t: model.apply(params, x_t, t, None)  # the null label ∅
      model_fn = sampling.classifier_free_guidance(conditional, unconditional, c.guidance_scale,
                                                   config.data.num_channels)
    if c.sampler == "ddim":
      return sampling.ddim_sample(d, model_fn, rng, shape, num_steps=c.num_steps or 50, eta=c.eta,
                                  clip_denoised=c.clip_denoised, cond_fn=cond_fn, progress=progress)
    if c.sampler == "dpm_solver":
      return sampling.dpm_solver_sample(d, model_fn, rng, shape, num_steps=c.num_steps or 20,
                                        clip_denoised=c.clip_denoised, cond_fn=cond_fn, progress=progress)
    return sampling.ddpm_sample(d, model_fn, rng, shape, num_steps=c.num_steps, clip_denoised=c.clip_denoised,
                                cond_fn=cond_fn, progress=progress)

  # x_T is drawn at the global shape inside the jit: sharding the output shards the whole loop by batch.
  return jax.jit(sample, out_shardings=parallel.data_sharding(mesh))


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str, mesh):
  """-> (EMA parameters, step) of the newest readable checkpoint of the run `config` in `workdir`."""
  from ddpm_jax import train  # the train state's structure
  ckpt = checkpoint.Checkpointer(workdir)
  state, step = ckpt.restore_latest(train.abstract_train_state(config, mesh))
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first (--mode=train).")
  return state.ema_params, step


def load_classifier(workdir: str, mesh):
  """The noisy classifier trained in `workdir` (its config.json and newest checkpoint) -> (module, params)."""
  classifier_config = ml_collections.ConfigDict(json.loads((epath.Path(workdir) / "config.json").read_text()))
  if classifier_config.model.name != "classifier":
    raise ValueError(f"{workdir} trained a {classifier_config.model.name!r}, not a noisy classifier.")
  params, _ = restore_ema_params(classifier_config, workdir, mesh)
  return models.get_model(classifier_config.model), params


def generate(config: ml_collections.ConfigDict, ema_params, step: int, num_samples: int, mesh,
             workdir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`num_samples` samples of the run `config` at `step` in batches of `sampling.batch_size`, with progress logs
  -> (uint8 images [N, H, W, C], labels [N]; zeros for an unconditional, unguided model). `workdir` holds an
  ARDM's loss components for parallel decoding."""
  from ddpm_jax import train  # the diffusion and model builders
  d, model = train.make_diffusion(config), models.get_model(config.model)
  c = config.sampling
  batch = c.batch_size
  if batch % jax.device_count():
    raise ValueError(f"sampling.batch_size={batch} is not divisible by the {jax.device_count()} devices.")
  classifier, classifier_params = None, None
  if c.classifier_workdir and c.classifier_scale:
    classifier, classifier_params = load_classifier(c.classifier_workdir, mesh)
  plan = ardm_decoding_plan(config, workdir) if config.ardm.enabled else None
  sample_fn = make_sample_fn(config, d, model, batch, mesh, classifier, progress=True, ardm_plan=plan)
  rng = jax.random.fold_in(train.run_rngs(config.seed)["sample"], step)
  num_classes = classifier.num_classes if classifier is not None else config.model.num_classes
  all_images, all_labels = [], []
  for i in range(-(-num_samples // batch)):
    batch_rng = jax.random.fold_in(rng, i)
    labels = None
    if num_classes:
      labels = jax.random.randint(jax.random.fold_in(batch_rng, 1), (batch,), 0, num_classes)
      all_labels.append(np.asarray(labels))
    x = sample_fn(ema_params, batch_rng, labels, classifier_params)
    all_images.append(image_utils.to_uint8(parallel.to_host(x)))
    logging.info("Sampled %d / %d with %s.", min((i + 1) * batch, num_samples), num_samples, c.sampler)
  images = np.concatenate(all_images)[:num_samples]
  labels = np.concatenate(all_labels)[:num_samples] if all_labels else np.zeros(len(images), np.int32)
  return images, labels


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes workdir/samples/samples_<step>.npz (uint8 "images" [N, H, W, C], int "labels" [N]) and a PNG grid
  of the first 64; returns the npz path."""
  from ddpm_jax import train
  train.validate_config(config)
  mesh = parallel.make_mesh()
  ema_params, step = restore_ema_params(config, workdir, mesh)
  images, labels = generate(config, ema_params, step, config.sampling.num_samples, mesh, workdir)
  out_dir = os.path.join(workdir, "samples")
  path = os.path.join(out_dir, f"samples_{step}.npz")
  if jax.process_index() == 0:
    files.save_npz(path, images=images, labels=labels)
    image_utils.save_png(image_utils.grid_uint8(image_utils.from_uint8(images[:64])),
                         os.path.join(out_dir, f"samples_{step}.png"))
    logging.info("Wrote %d samples to %s.", len(images), path)
  return path
