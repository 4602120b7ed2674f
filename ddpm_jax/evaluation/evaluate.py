"""`--mode=eval`: FID and Inception Score of samples, and bits/dim on the test split, for the newest checkpoint.

config.eval:
  inception_path        pytorch-fid's pt_inception-2015-12-05-*.pth (or its converted .npz); FID/IS are
                        skipped, with a warning, when unset
  num_fid_samples       samples generated with config.sampling for FID, IS and the offline metrics
  feature_net_path      the dataset's own feature network (evaluation/feature_net.py; default: the shipped
                        weights for the dataset and size, e.g. digits 8×8): offline metrics feature_fd,
                        feature_class_score, class_accuracy (class-conditional samples), memorized_fraction
  reference_stats_path  cache of the dataset's Inception statistics (default: workdir/fid_stats_<data>.npz),
                        computed once from `num_reference_images` training images
  bpd_num_batches       test batches of `training.batch_size` for bits/dim: the VLB (calc_bpd_loop; VDM's; an
                        ARDM's exact NLL along a random order) or a score SDE's probability-flow ODE
                        likelihood (sde.bits_per_dim); 0 skips

Results go to workdir/eval_<step>.json and TensorBoard (eval/…).
"""
from __future__ import annotations

import functools
import json
import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import ardm, diffusion, files, input_pipeline, losses, models, parallel, sde, vdm
from ddpm_jax.evaluation import feature_net, fid, offline_metrics
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.evaluation import sample as sample_lib


def inception_statistics(inception_params, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Images NHWC in [-1, 1] -> {"mu", "sigma"} of pool3 features and the "logits" [N, 1008]."""
  pools, logits = [], []
  for start in range(0, len(images), batch_size):
    pool, logit = fid.inception_features(inception_params, images[start:start + batch_size])
    pools.append(np.asarray(pool))
    logits.append(np.asarray(logit))
  mu, sigma = fid.feature_statistics(np.concatenate(pools))
  return {"mu": mu, "sigma": sigma, "logits": np.concatenate(logits)}


def reference_statistics(config: ml_collections.ConfigDict, inception_params, path: str) -> dict[str, np.ndarray]:
  """The dataset's Inception statistics, read from `path` or computed once and cached there."""
  if epath.Path(path).exists():
    cached = files.load_npz(path)
    return {"mu": cached["mu"], "sigma": cached["sigma"]}
  n, batch = config.eval.num_reference_images, config.sampling.batch_size
  logging.info("Computing Inception statistics of %d %s training images (cached to %s).", n, config.data.dataset,
               path)
  local = np.concatenate([b["image"] for b in input_pipeline.batches(
      config.data, split="train", global_batch_size=batch, seed=config.seed, num_steps=-(-n // batch))])
  images = parallel.to_host(local)[:n]  # every process reads its share; all compute the same statistics
  stats = inception_statistics(inception_params, images, batch)
  if jax.process_index() == 0:
    files.save_npz(path, mu=stats["mu"], sigma=stats["sigma"])
  return stats


def test_bits_per_dim(config: ml_collections.ConfigDict, ema_params, mesh, workdir: str) -> float:
  """Mean negative log-likelihood bound in bits/dim of the 8-bit test data over `eval.bpd_num_batches` batches:
  the discrete VLB with all T terms (`calc_bpd_loop`), a VDM's VLB (one low-discrepancy t per example: unbiased),
  a score SDE's probability-flow likelihood of the dequantised data, or an ARDM's exact -log p(x | σ) along one
  random order per example (D network calls; its per-step means are saved as the loss components from which
  sampling plans parallel decoding)."""
  from ddpm_jax import train
  d, model, score_sde = train.make_diffusion(config), models.get_model(config.model), train.make_sde(config)

  def total_bpd(params, x0, rng):
    if config.vdm.schedule:
      t_rng, noise_rng, recon_rng = jax.random.split(rng, 3)
      terms = vdm.vlb_terms(params["schedule"], train.vdm_eps_fn(config, model, params["unet"]), x0,
                            vdm.time_samples(t_rng, x0.shape[0]), jax.random.normal(noise_rng, x0.shape),
                            jax.random.normal(recon_rng, x0.shape), config.vdm.num_steps)
      return losses.bits_per_dim(terms["total"], x0), None
    if config.ardm.enabled:
      nats, per_step = ardm.nll_along_order(train.ardm_logits_fn(config, model, params), train.ardm_values(config, x0),
                                            ardm.random_order(rng, x0.shape))
      return losses.bits_per_dim(nats, x0), per_step
    model_fn = lambda x_t, t: model.apply(params, x_t, t)
    if score_sde is None:  # the discrete-time VLB
      return diffusion.calc_bpd_loop(d, model_fn, x0, rng)["total_bpd"], None
    # The probability-flow ODE's likelihood of the dequantised 8-bit data (Hutchinson's trace estimate).
    images = jnp.round((x0 + 1.0) * 127.5).astype(jnp.uint8)
    return sde.bits_per_dim(score_sde, sde.model_score_fn(score_sde, model_fn, config.sde.conditioning),
                            images, rng), None

  bpd_fn = jax.jit(total_bpd)
  sharding = parallel.data_sharding(mesh)
  totals, per_steps = [], []
  batches = input_pipeline.batches(config.data, split="test", global_batch_size=config.training.batch_size,
                                   seed=config.seed, num_steps=config.eval.bpd_num_batches)
  for i, batch in enumerate(batches):
    x0 = parallel.global_batch(batch, sharding)["image"]
    bpd, per_step = bpd_fn(ema_params, x0, jax.random.key(i))
    totals.append(parallel.to_host(bpd))
    if per_step is not None:
      per_steps.append(parallel.to_host(per_step))
    logging.info("bits/dim batch %d / %d: %.4f", i + 1, config.eval.bpd_num_batches, totals[-1].mean())
  if per_steps and jax.process_index() == 0:
    path = sample_lib.ardm_loss_components_path(workdir)
    files.save_npz(path, loss_components=np.concatenate(per_steps).mean(axis=0))
    logging.info("Wrote the ARDM loss components (nats per step) to %s.", path)
  return float(np.concatenate(totals).mean())


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  from ddpm_jax import train
  train.validate_config(config)
  mesh = parallel.make_mesh()
  ema_params, step = sample_lib.restore_ema_params(config, workdir, mesh)
  c = config.eval
  results: dict[str, float] = {}

  @functools.cache
  def generate():  # the same samples for FID and the offline metrics
    return sample_lib.generate(config, ema_params, step, c.num_fid_samples, mesh, workdir)
  if c.inception_path:
    inception_params = fid.load_inception_params(c.inception_path)
    size = config.data.image_size
    stats_path = c.reference_stats_path or os.path.join(
        workdir, f"fid_stats_{config.data.dataset.replace('/', '_')}_{size}.npz")
    reference = reference_statistics(config, inception_params, stats_path)
    images, labels = generate()
    generated = inception_statistics(inception_params, image_utils.from_uint8(images),
                                     config.sampling.batch_size)
    results["fid"] = fid.frechet_distance(generated["mu"], generated["sigma"], reference["mu"], reference["sigma"])
    results["inception_score"], results["inception_score_std"] = fid.inception_score(generated["logits"])
  else:
    logging.warning("config.eval.inception_path is not set: skipping FID and Inception Score.")
  net_path = c.feature_net_path or feature_net.default_path(config.data.dataset, config.data.image_size)
  if net_path and c.num_fid_samples:
    images, labels = generate()
    conditional = bool(config.model.num_classes) or bool(config.sampling.classifier_workdir and
                                                          config.sampling.classifier_scale)
    train_images, _ = input_pipeline.load_split(config.data, "train")
    test_images, _ = input_pipeline.load_split(config.data, "test")
    results.update(offline_metrics.evaluate_samples(feature_net.load(net_path)[0], images,
                                                    labels if conditional else None, train_images, test_images))
  if c.bpd_num_batches:
    results["bpd"] = test_bits_per_dim(config, ema_params, mesh, workdir)
  if jax.process_index() == 0:
    (epath.Path(workdir) / f"eval_{step}.json").write_text(json.dumps({"step": step, **results}, indent=2))
    from tensorboardX import SummaryWriter
    with SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
      for k, v in results.items():
        writer.add_scalar(f"eval/{k}", v, step)
    logging.info("Evaluation at step %d: %s", step, results)
  return results
