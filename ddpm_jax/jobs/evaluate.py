"""`--mode=eval`: FID, sFID, improved precision/recall and Inception Score of samples, and bits/dim
on the held-out split (data.eval_split), for the newest checkpoint.

config.eval:
  inception_path        pytorch-fid's pt_inception-2015-12-05-*.pth (or its converted .npz); FID/IS
                        are skipped, with a warning, when unset
  num_fid_samples       samples generated with config.sampling for FID, IS and the offline metrics
  feature_net_path      the dataset's own feature network (evaluation/feature_net.py; default: the
                        shipped weights for the dataset and size, e.g. digits 8×8): offline metrics
                        feature_fd, feature_class_score, class_accuracy (class-conditional samples),
                        memorized_fraction
  reference_stats_path  cache of the dataset's Inception statistics (default:
                        workdir/fid_stats_<data>_<split>_<size>.npz), computed once from
                        `num_reference_images` training images; or pytorch-fid's --save-stats npz
                        (mu, sigma), or one of ADM's reference batches (arr_0, mu, sigma, mu_s,
                        sigma_s)
  precision_recall_images  the first this many reference and sample pool3 features give improved
                        precision/recall (k = 3); 0: none
  num_loss_batches      held-out batches for the family's loss without dropout ("loss"); 0 skips
  bpd_num_batches       held-out batches of `training.batch_size` for the family's bits/dim: the VLB
                        (calc_bpd_loop; VDM's; an ARDM's exact NLL along a random order) or a score
                        SDE's probability-flow ODE likelihood (sde.bits_per_dim); 0 skips. A
                        latent run reports that of its latents as "latent_bpd"

config.family="representation" adds its linear probes, reconstruction and semantic consistency
(evaluation/representation.py); a diffusion prior (config.family="prior") its embeddings' Fréchet
distance to the held-out split's (`embedding_fd`, its samples drawn for the held-out labels repeated
to at least PRIOR_EVAL_MIN_SAMPLES rows) beside the same distance of the train split's own
embeddings (`embedding_fd_train_split`: what a perfect model's samples would score, the floor).
Results go to workdir/eval_<step>.json and TensorBoard (eval/…).
"""

from __future__ import annotations

import functools
import json
import os
import re

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import families, pixels
from ddpm_jax.data import loader, sources, workers
from ddpm_jax.evaluation import feature_net, fid, offline_metrics
from ddpm_jax.evaluation import representation as representation_eval
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import latent
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.jobs.train_state import run_rngs
from ddpm_jax.runtime import files, metric_writer, parallel

FID_PROTOCOL_SAMPLES = 50_000


def inception_statistics(
  inception_params, images: np.ndarray, batch_size: int, num_pool_features: int = 0
) -> dict[str, np.ndarray]:
  """Images NHWC in [-1, 1] -> the Fréchet statistics "mu", "sigma" of the pool3 features and
  "mu_s", "sigma_s" of sFID's spatial ones (the names of ADM's reference batches), the first
  `num_pool_features` pool3 features "pool" (precision/recall) and the "logits" [N, 1008]."""
  pools, logits, spatials = [], [], []
  for start in range(0, len(images), batch_size):
    pool, logit, spatial = fid.inception_features_with_spatial(
      inception_params, images[start : start + batch_size]
    )
    pools.append(np.asarray(pool))
    logits.append(np.asarray(logit))
    spatials.append(np.asarray(spatial))
  pool = np.concatenate(pools)
  mu, sigma = fid.feature_statistics(pool)
  mu_s, sigma_s = fid.feature_statistics(np.concatenate(spatials))
  return {
    "mu": mu,
    "sigma": sigma,
    "mu_s": mu_s,
    "sigma_s": sigma_s,
    "pool": pool[:num_pool_features],
    "logits": np.concatenate(logits),
  }


REFERENCE_KEYS = ("mu", "sigma", "mu_s", "sigma_s", "pool")


def reference_statistics(
  config: ml_collections.ConfigDict, inception_params, path: str
) -> dict[str, np.ndarray]:
  """The dataset's Inception statistics (`REFERENCE_KEYS`), read from `path` or computed once from
  the unflipped training split and cached there. A given npz may hold only "mu"/"sigma"
  (pytorch-fid's --save-stats: no sFID, no precision/recall) or be one of ADM's reference batches
  (its images "arr_0" give the pool features, and the spatial statistics where it lacks them)."""
  num_pool = config.eval.precision_recall_images
  batch = config.sampling.batch_size
  if epath.Path(path).exists():
    cached = files.load_npz(path)
    stats = {key: cached[key] for key in REFERENCE_KEYS if key in cached}
    if "arr_0" in cached and not {"mu_s", "pool"} <= set(stats):
      logging.info(
        "Inception features of the %d reference images in %s.", len(cached["arr_0"]), path
      )
      computed = inception_statistics(
        inception_params, pixels.from_uint8(cached["arr_0"]), batch, num_pool
      )
      stats = {**computed, **stats}
    return stats
  n = config.eval.num_reference_images
  logging.info(
    "Computing Inception statistics of %d %s training images (cached to %s).",
    n,
    config.data.dataset,
    path,
  )
  data = latent.pixel_data(config).copy_and_resolve_references()  # images, also of latent runs
  data.random_flip = False  # the reference set is the data as it is, never augmented
  local = np.concatenate(
    [
      b["image"]
      for b in loader.batches(
        data,
        split=data.train_split,
        global_batch_size=batch,
        seed=config.seed,
        num_steps=-(-n // batch),
      )
    ]
  )
  # every process reads its share; all compute the same statistics
  images = parallel.to_host(local)[:n]
  stats = inception_statistics(inception_params, images, batch, num_pool)
  stats = {key: stats[key] for key in REFERENCE_KEYS}
  if jax.process_index() == 0:
    files.save_npz(path, **stats)
  return stats


def inception_metrics(generated: dict, reference: dict, k: int = 3) -> dict[str, float]:
  """FID, and where the reference has what they need sFID and precision/recall (k-NN) of the
  generated statistics (`inception_statistics`) against the reference ones."""
  results = {
    "fid": fid.frechet_distance(
      generated["mu"], generated["sigma"], reference["mu"], reference["sigma"]
    )
  }
  if "mu_s" in reference:
    results["sfid"] = fid.frechet_distance(
      generated["mu_s"], generated["sigma_s"], reference["mu_s"], reference["sigma_s"]
    )
  else:
    logging.warning("The reference statistics have no spatial features (mu_s/sigma_s): no sFID.")
  if len(reference.get("pool", ())) > k and len(generated["pool"]) > k:
    results["precision"], results["recall"] = fid.precision_recall(
      reference["pool"], generated["pool"], k
    )
  elif len(generated["pool"]):
    logging.warning("The reference statistics have no pool3 features: no precision/recall.")
  return results


def reference_cache_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the reference statistics are cached: one file per dataset, split and resolution."""
  data = latent.pixel_data(config)
  key = f"{data.dataset}_{data.train_split}_{data.image_size}"
  return os.path.join(workdir, "fid_stats_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".npz")


def check_fid_sample_count(eval_config: ml_collections.ConfigDict) -> str:
  """The FID protocol's 50,000 samples unless `eval.allow_fewer_fid_samples`; -> the note printed
  beside a metric of fewer samples ("" for the protocol's count)."""
  n = eval_config.num_fid_samples
  if n >= FID_PROTOCOL_SAMPLES:
    return ""
  if not eval_config.allow_fewer_fid_samples:
    raise ValueError(
      f"eval.num_fid_samples={n} is fewer than the FID protocol's {FID_PROTOCOL_SAMPLES:,}: its "
      "FID is biased upwards and not comparable with published numbers. Set "
      "eval.allow_fewer_fid_samples=True to measure it anyway."
    )
  return f"from {n} samples, not the protocol's {FID_PROTOCOL_SAMPLES:,}"


def held_out_batches(config: ml_collections.ConfigDict, num_batches: int):
  """This process's share of the first `num_batches` batches of `data.eval_split`, every time."""
  return loader.batches(
    latent.input_data(config),
    split=config.data.eval_split,
    global_batch_size=config.training.batch_size,
    seed=config.seed,
    num_steps=num_batches,
  )


def make_held_out_loss(
  config: ml_collections.ConfigDict, family: families.Family, mesh, autoencoder=latent.RUNS_OWN
):
  """-> (params) -> the family's mean loss, without dropout and with t uniform, on the first
  `eval.num_loss_batches` batches of `data.eval_split`; the same draws at every call, so that the
  values of one run compare. `autoencoder`: a latent run's, where the caller has loaded it."""

  def mean_loss(params, batch, rng):
    draws = family.draw(families.step_keys(rng), batch, None)
    return jnp.mean(family.loss(params, batch, draws, None) * draws["weight"])

  loss_fn = jax.jit(mean_loss, out_shardings=parallel.replicated(mesh))
  sharding = parallel.data_sharding(mesh)
  key = run_rngs(config.seed)["eval"]
  autoencoder = latent.loaded(autoencoder, config, mesh)  # a latent run's: the batches are encoded

  def held_out_loss(params) -> float:
    losses = []
    for i, batch in enumerate(held_out_batches(config, config.eval.num_loss_batches)):
      batch = parallel.global_batch(batch, sharding)
      batch = latent.model_batch(autoencoder, batch, jax.random.fold_in(key, 2**31 - 1 - i))
      losses.append(loss_fn(params, batch, jax.random.fold_in(key, i)))
    return float(np.mean(jax.device_get(losses)))

  return held_out_loss


def held_out_bits_per_dim(
  config: ml_collections.ConfigDict, ema_params, mesh, workdir: str, autoencoder=latent.RUNS_OWN
) -> float:
  """Mean negative log-likelihood (bound) in bits/dim of the 8-bit held-out data over
  `eval.bpd_num_batches` batches (a class-conditional model's given the true labels), by the
  family's likelihood: the discrete VLB with all T terms
  (`calc_bpd_loop`), a VDM's VLB (one low-discrepancy t per example: unbiased), a score SDE's
  probability-flow likelihood of the dequantised data, or an ARDM's exact -log p(x | σ) along one
  random order per example (its per-step losses are saved for the sampler's parallel decoding
  plan). A latent run's is that of the latents the model sees (one posterior sample per image,
  scaled by latent.scaling_factor) under the continuous decoder / the ODE's density: "latent_bpd",
  not comparable with pixels' bits/dim. `autoencoder`: that run's, where the caller loaded it."""
  family = families.get_family(config)
  if family.bits_per_dim is None:
    raise ValueError(
      f"config.family={config.family!r} has no likelihood: set eval.bpd_num_batches=0."
    )
  bpd_fn = jax.jit(family.bits_per_dim)
  sharding = parallel.data_sharding(mesh)
  autoencoder = latent.loaded(autoencoder, config, mesh)  # a latent run's: the batches are encoded
  key = run_rngs(config.seed)["eval"]
  outputs = []
  for i, batch in enumerate(held_out_batches(config, config.eval.bpd_num_batches)):
    batch = parallel.global_batch(batch, sharding)
    batch = latent.model_batch(autoencoder, batch, jax.random.fold_in(key, 2**30 + i))
    cond = families.Cond(
      label=batch["label"] if config.model.get("num_classes") else None,  # the true ones
      context=batch.get("context"),  # a context-conditional model's given the examples' contexts
      embedding=batch.get("embedding"),  # an embedding-conditioned decoder's, likewise
    )
    terms_i = bpd_fn(ema_params, batch["image"], jax.random.key(i), cond)
    outputs.append({k: parallel.to_host(v) for k, v in terms_i.items()})
    logging.info(
      "%s batch %d / %d: %.4f",
      "bits/dim" if autoencoder is None else "latent bits/dim",
      i + 1,
      config.eval.bpd_num_batches,
      outputs[-1]["bpd"].mean(),
    )
  terms = {k: np.concatenate([out[k] for out in outputs]) for k in outputs[0]}
  if family.save_likelihood_terms is not None and jax.process_index() == 0:
    family.save_likelihood_terms(workdir, terms)
  return float(terms["bpd"].mean())


def representation_metrics(config, family: families.Family, params) -> dict[str, float]:
  """evaluation/representation.py's metrics (probes, reconstruction, semantic consistency) of
  the trained `params` of `family` (config.family="representation")."""
  options = config.representation
  train_images, train_labels = workers.split_images(config.data, config.data.train_split)
  test_images, test_labels = workers.split_images(config.data, config.data.eval_split)

  def probe(train_x, test_x):
    return representation_eval.probe_accuracy(
      train_x, train_labels, test_x, test_labels, options.probe_c
    )

  untrained = jax.jit(family.init_params)(jax.random.key(config.seed))  # one program, not 200
  test_codes = sample_lib.represent_all(family, params, test_images)
  results = {
    "probe_accuracy": probe(sample_lib.represent_all(family, params, train_images), test_codes),
    "probe_accuracy_untrained": probe(
      sample_lib.represent_all(family, untrained, train_images),
      sample_lib.represent_all(family, untrained, test_images),
    ),
    "probe_accuracy_pixels": probe(
      train_images.reshape(len(train_images), -1).astype(np.float32),
      test_images.reshape(len(test_images), -1).astype(np.float32),
    ),
  }
  logging.info("Linear probes: %s", results)
  count = min(options.num_eval_images, len(test_images))
  x0 = jnp.asarray(pixels.from_uint8(test_images[:count]))
  cond = families.Cond(embedding=jnp.asarray(test_codes[:count]))
  encode, decode = family.make_latent_codec(options.eval_num_steps)
  reconstructed = jax.jit(lambda p, x, c: decode(p, encode(p, x, c), c))(params, x0, cond)
  results["reconstruction_mse"] = float(jnp.mean((reconstructed - x0) ** 2))
  net_path = config.eval.feature_net_path or feature_net.default_path(
    config.data.dataset, config.data.image_size
  )
  if net_path:
    x_T = jax.random.normal(jax.random.key(config.seed + 1), x0.shape)  # fresh noise
    decoded = jax.jit(decode)(params, x_T, cond)
    _, logits = feature_net.apply(feature_net.load(net_path)[0], np.asarray(decoded))
    results["semantic_consistency"] = float(np.mean(np.argmax(logits, -1) == test_labels[:count]))
  else:
    logging.warning(
      "No feature network for %s at %d px (eval.feature_net_path): no semantic_consistency.",
      config.data.dataset,
      config.data.image_size,
    )
  logging.info("Representation metrics: %s", results)
  return results


PRIOR_EVAL_MIN_SAMPLES = 1000


def embedding_metrics(config, ema_params, mesh) -> dict[str, float]:
  """A diffusion prior's `embedding_fd` and `embedding_fd_train_split` (module docstring)."""
  held_out = sources.EmbeddingsSource(config.data.path, config.data.eval_split)
  train = sources.EmbeddingsSource(config.data.path, config.data.train_split)
  reference = held_out.arrays["embedding"]
  repeats = -(-PRIOR_EVAL_MIN_SAMPLES // len(reference))
  cond = families.Cond(label=np.tile(held_out.labels, repeats)) if held_out.num_classes else None
  count = len(reference) * repeats
  samples, _ = sample_lib.generate(config, ema_params, count, mesh, cond=cond)

  def distance(embeddings):
    stats = lambda a: (a.mean(0), np.cov(a, rowvar=False))
    return fid.frechet_distance(*stats(np.asarray(embeddings, np.float64)), *stats(reference))

  results = {
    "embedding_fd": distance(samples),
    "embedding_fd_train_split": distance(train.arrays["embedding"]),
  }
  logging.info("The prior's embeddings against %d held-out ones: %s", len(reference), results)
  return results


def reconstruction_metrics(config, family: families.Family, params) -> dict[str, float]:
  """An autoencoder's reconstructions of data.eval_split from their posterior means: the mean
  squared error and PSNR in [-1, 1] units (peak-to-peak 2), and the std of the latents."""
  images, _ = workers.split_images(config.data, config.data.eval_split)
  reconstruct = jax.jit(family.reconstruct)
  batch = config.sampling.batch_size
  errors, latents = [], []
  for first in range(0, len(images), batch):
    x = pixels.from_uint8(images[first : first + batch])
    x_hat, z = reconstruct(params, x)
    errors.append(np.mean(np.square(np.asarray(x_hat) - x), axis=(1, 2, 3)))
    latents.append(np.asarray(z).reshape(len(x), -1))
  mse = float(np.mean(np.concatenate(errors)))
  return {
    "reconstruction_mse": mse,
    "psnr": float(10 * np.log10(4.0 / mse)),
    "latent_std": float(np.std(np.concatenate(latents))),
  }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  validate_config(config)
  mesh = parallel.make_mesh()
  ema_params, step = sample_lib.restore_ema_params(config, workdir, mesh)
  eval_config = config.eval
  family = families.get_family(config)
  results: dict[str, float] = {}
  fewer_samples = check_fid_sample_count(eval_config) if eval_config.num_fid_samples else ""
  autoencoder = latent.load_autoencoder(config, mesh)  # a latent run's, once for every metric
  if eval_config.num_loss_batches:
    results["loss"] = make_held_out_loss(config, family, mesh, autoencoder)(ema_params)

  @functools.cache
  def generate():  # the same samples for FID and the offline metrics
    count = eval_config.num_fid_samples
    return sample_lib.generate(config, ema_params, count, mesh, workdir, autoencoder=autoencoder)

  if family.make_sampler is None:
    logging.info("config.family=%r generates no images: no sample metrics.", config.family)
  elif eval_config.inception_path:
    inception_params = fid.load_inception_params(eval_config.inception_path)
    stats_path = eval_config.reference_stats_path or reference_cache_path(config, workdir)
    reference = reference_statistics(config, inception_params, stats_path)
    images, labels = generate()
    generated = inception_statistics(
      inception_params,
      pixels.from_uint8(images),
      config.sampling.batch_size,
      eval_config.precision_recall_images,
    )
    results.update(inception_metrics(generated, reference))
    results["inception_score"], results["inception_score_std"] = fid.inception_score(
      generated["logits"]
    )
  else:
    logging.warning("config.eval.inception_path is not set: skipping FID and Inception Score.")
  data = latent.pixel_data(config)  # the images, whatever space the model works in
  net_path = eval_config.feature_net_path or feature_net.default_path(data.dataset, data.image_size)
  if net_path and eval_config.num_fid_samples and family.make_sampler is not None:
    images, labels = generate()
    conditional = bool(config.model.get("num_classes")) or bool(
      config.sampling.classifier_workdir and config.sampling.classifier_scale
    )
    # (split_images: also a reflow's float pairs as the uint8 images they stand for)
    train_images, _ = workers.split_images(data, "train")
    test_images, _ = workers.split_images(data, config.data.eval_split)
    results.update(
      offline_metrics.evaluate_samples(
        feature_net.load(net_path)[0],
        images,
        labels if conditional else None,
        train_images,
        test_images,
      )
    )
  if eval_config.bpd_num_batches:
    name = "latent_bpd" if latent.latent_workdir(config) else "bpd"
    results[name] = held_out_bits_per_dim(config, ema_params, mesh, workdir, autoencoder)
  if family.represent is not None:  # a learned representation: probes, reconstruction, consistency
    results.update(representation_metrics(config, family, ema_params))
  if family.samples == "embeddings":  # a diffusion prior
    results.update(embedding_metrics(config, ema_params, mesh))
  if family.reconstruct is not None:  # an autoencoder
    results.update(reconstruction_metrics(config, family, ema_params))
  if jax.process_index() == 0:
    (epath.Path(workdir) / f"eval_{step}.json").write_text(
      json.dumps(
        {"step": step, **results, "num_fid_samples": eval_config.num_fid_samples}, indent=2
      )
    )
    with metric_writer.summary_writer(os.path.join(workdir, "tensorboard")) as writer:
      for k, v in results.items():
        writer.add_scalar(f"eval/{k}", v, step)
    logging.info(
      "Evaluation at step %d: %s%s",
      step,
      results,
      f" (sample metrics {fewer_samples})" if fewer_samples else "",
    )
  return results
