"""`--mode=sample`: N samples from the newest checkpoint's EMA parameters, to `samples_<step>.npz`
and a PNG.

Every family samples with its own sampler (families/*.py), chosen and tuned by config.sampling: for
the Gaussian family sampler ("ddpm" | "ddim" | "dpm_solver"), num_steps (None: all T for ddpm, 50
for ddim, 20 for dpm_solver), eta (DDIM), guidance_scale (classifier-free, class-conditional
models), classifier_workdir and classifier_scale (classifier guidance by a run of
config.family="classifier"), clip_denoised; score SDEs by sampler ("pc" with predictor, corrector,
snr and n_corrector, "ode", "annealed_langevin", or a σ-space solver), VDMs
ancestrally on num_steps (default 1000) equal steps of t, ARDMs in a random order in num_steps
(default D) parallel steps. num_samples and batch_size for all.
"""

from __future__ import annotations

import datetime
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import workdir as workdir_configs
from ddpm_jax import families, pixels, sde, super_res
from ddpm_jax.data import sources, workers
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.families.config_validation import InvalidConfigError, validate_config
from ddpm_jax.jobs import latent
from ddpm_jax.jobs.train_state import config_key, restore_ema_params, run_rngs
from ddpm_jax.runtime import executables, files, parallel


def sample_keys(rng: jax.Array, first_index, batch_size: int) -> jax.Array:
  """The keys of samples first_index, …, first_index + batch_size - 1: key i = fold_in(rng, i)."""
  indices = first_index + jnp.arange(batch_size, dtype=jnp.int32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)


def make_sample_fn(family: families.Family, batch_size: int, mesh, **sampler_options):
  """The family's sampler jitted over `mesh`: (params, rng, cond: families.Cond of [B, …] rows |
  None, guide_params=None, controls=None, first_index=0, x_T: the initial noise [B, H, W, C] |
  None) -> samples [B, H, W, C] sharded along "data".

  Sample b is the family's sampler run on its own key fold_in(rng, first_index + b) alone (vmapped
  over the batch), so that sample i of a run depends on (rng, i) only: not on the batch size, the
  device count or which batch it fell in; except where a step takes statistics over the batch (score
  SDEs' Langevin corrector, as score_sde: over sde.SAMPLE_AXIS)."""
  if family.make_sampler is None:
    raise ValueError(f"config.family={family.name!r} does not generate images.")
  if batch_size % mesh.size:
    raise ValueError(
      f"A sample batch of {batch_size} is not divisible by the {mesh.size} devices: set "
      f"sampling.batch_size to a multiple of {mesh.size}."
    )
  single = family.make_sampler(1, **sampler_options)
  sharding = parallel.data_sharding(mesh)

  def sample(params, rng, cond=None, guide_params=None, controls=None, first_index=0, x_T=None):
    keys = jax.lax.with_sharding_constraint(sample_keys(rng, first_index, batch_size), sharding)

    def one(key, cond_row, x_T_row):  # a batch of one example
      cond_row, x_T_row = jax.tree_util.tree_map(lambda a: a[None], (cond_row, x_T_row))
      return single(params, key, cond_row, guide_params, controls, x_T_row)[0]

    # one example at a time on its own key; statistics over the batch (score_sde's Langevin step
    # size) over sde.SAMPLE_AXIS
    return jax.vmap(one, axis_name=sde.SAMPLE_AXIS)(keys, cond or families.Cond(), x_T)

  return jax.jit(sample, out_shardings=sharding)


def saved_sample_fn(
  config, family: families.Family, batch_size: int, mesh, args: tuple, guide, workdir
):
  """`make_sample_fn` compiled for `args` (params, rng, cond rows, guide_params, controls,
  first_index, x_T), loaded where a restarted job saved it (runtime/executables.py); keyed by the
  config, the guide's network and the files in `workdir` that the family's sampler reads."""
  read = [files.digest(path) for path in family.sampler_files(workdir)] if workdir else []
  key = json.dumps([config_key(config), repr(guide), read])
  return executables.compiled(
    lambda: make_sample_fn(family, batch_size, mesh, guide=guide, workdir=workdir),
    args,
    "sampler",
    key,
  )


def class_rows(num_samples: int, classes) -> np.ndarray:
  """Labels [num_samples] for a grid of one row per class: `classes` in turn, each repeated for a
  row of num_samples // len(classes) (at least 1) samples."""
  classes = np.asarray(classes, np.int32)
  per_row = max(1, num_samples // len(classes))
  return classes[(np.arange(num_samples) // per_row) % len(classes)]


def pad_rows(rows: np.ndarray, batch_size: int) -> jax.Array:
  """Per-sample rows [n ≤ batch_size, …] (labels, contexts, low-res images) padded with zeros to a
  whole batch (the padded samples are cut)."""
  padding = [(0, batch_size - len(rows))] + [(0, 0)] * (np.ndim(rows) - 1)
  return jnp.asarray(np.pad(rows, padding))


def batch_rows(cond: families.Cond, first: int, batch_size: int) -> families.Cond:
  """Rows first … first + batch_size of every field of `cond`, padded to a whole batch."""
  return jax.tree_util.tree_map(
    lambda rows: pad_rows(rows[first : first + batch_size], batch_size), cond
  )


def generation_contexts(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
  """The contexts [num_samples, L, D] of a context-conditional model's samples: those of
  `sampling.context_file` (.npy, or .npz with "context") or else of `data.eval_split`'s examples,
  in turn; None for a model without contexts."""
  if not config.model.get("context_dim"):
    return None
  path = config.sampling.context_file
  if path:
    loaded = files.load_npz(path)["context"] if path.endswith(".npz") else np.load(path)
    contexts = np.asarray(loaded, np.float32)
    if contexts.ndim == 2:  # one vector per sample
      contexts = contexts[:, None]
  else:
    source = sources.open_source(config.data, config.data.eval_split)
    count = min(num_samples, len(source))
    contexts = np.stack([sources.as_context(source[i]["context"]) for i in range(count)])
  if contexts.ndim != 3 or contexts.shape[-1] != config.model.context_dim:
    raise ValueError(
      f"Contexts must be [N, L, model.context_dim={config.model.context_dim}]; got "
      f"{contexts.shape} from {path or config.data.eval_split}."
    )
  return contexts[np.arange(num_samples) % len(contexts)]


def eval_split_images(config: ml_collections.ConfigDict, count: int):
  """The first `count` images of data.eval_split at the data's size (uint8), with their labels."""
  return workers.split_images(config.data, config.data.eval_split, count)


def low_res_inputs(
  config: ml_collections.ConfigDict, size: int, num_samples: int, mesh=None, cascade: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
  """The low-resolution images [num_samples, s, s, C] in [-1, 1] that a super-resolution model
  upsamples, in turn, with their labels (None for an unconditional model): the samples of the run
  in `super_res.low_res_workdir` (a cascade: that model samples first, on `mesh`, and its labels
  go on), the images of `super_res.low_res_file` (an npz of uint8 "images" [+ "labels"], as
  --mode=sample writes, or guided-diffusion's "arr_0" [+ "arr_1"]), or else data.eval_split's
  first images downsampled, with their labels; `cascade=False` skips the workdir's."""
  options, conditional = config.super_res, bool(config.model.get("num_classes"))
  if cascade and options.get("low_res_workdir"):
    where = options.low_res_workdir
    base_config = workdir_config(where)
    if conditional and not base_config.model.get("num_classes"):
      raise ValueError(
        f"A class-conditional super-resolution model needs the labels of its inputs: the model "
        f"in super_res.low_res_workdir={where} is unconditional."
      )
    base_params, _ = restore_ema_params(base_config, where, mesh)
    uint8_images, labels = generate(base_config, base_params, num_samples, mesh, where)
    images = pixels.from_uint8(uint8_images)
  elif options.get("low_res_file"):
    where = options.low_res_file
    arrays = files.load_npz(where)
    images = pixels.from_uint8(arrays["images"] if "images" in arrays else arrays["arr_0"])
    labels = arrays.get("labels", arrays.get("arr_1"))
  else:
    where = config.data.eval_split
    uint8_images, labels = eval_split_images(config, num_samples)
    images = np.asarray(super_res.downsample(pixels.from_uint8(uint8_images), size))
  expected = (size, size, config.data.num_channels)
  if images.ndim != 4 or images.shape[1:] != expected:
    raise ValueError(
      f"The low-resolution inputs must be [N, {', '.join(map(str, expected))}] "
      f"(super_res.low_res_size, data.num_channels); got {images.shape} from {where}."
    )
  if conditional and labels is None:
    raise ValueError(f"A class-conditional super-resolution model needs labels with {where}.")
  rows = np.arange(num_samples) % len(images)
  return images[rows], (np.asarray(labels, np.int32)[rows] if conditional else None)


def represent_all(family: families.Family, params, images: np.ndarray, batch_size: int = 256):
  """z [N, D] of uint8 images [N, H, W, C], in batches of one shape (the last one padded), so that
  it compiles once."""
  represent = jax.jit(family.represent)
  batch_size = min(batch_size, len(images))
  codes = []
  for i in range(0, len(images), batch_size):
    batch = images[i : i + batch_size]
    padded = np.concatenate([batch, np.zeros_like(images[: batch_size - len(batch)])])
    codes.append(np.asarray(represent(params, pixels.from_uint8(padded)))[: len(batch)])
  return np.concatenate(codes)


def represented_inputs(config: ml_collections.ConfigDict, family, params, num_samples: int):
  """(z [num_samples, D], labels): the codes `family.represent` gives data.eval_split's first
  images under `params`, in turn, with those images' labels (what the samples should show)."""
  if params is None:
    raise ValueError(f"config.family={family.name!r} samples from codes: it needs the parameters.")
  images, labels = eval_split_images(config, num_samples)
  rows = np.arange(num_samples) % len(images)
  return represent_all(family, params, images)[rows], labels[rows]


def held_out_embeddings(config: ml_collections.ConfigDict) -> bool:
  """Whether `embedding_inputs` takes data.eval_split's examples' embeddings (neither a prior nor
  a file gives them), so that their images are known."""
  return not (config.sampling.get("prior_workdir") or config.sampling.get("embedding_file"))


def embedding_inputs(
  config: ml_collections.ConfigDict, num_samples: int, mesh=None
) -> tuple[np.ndarray, np.ndarray | None]:
  """(embeddings [num_samples, D], labels | None) that an embedding-conditioned decoder decodes,
  in turn: those a diffusion prior samples (sampling.prior_workdir, the two-stage generation of
  unCLIP; labels class by class, sampling.labels or every class of the prior), those of
  sampling.embedding_file (an .npz of "embeddings" as a prior's --mode=sample writes, or of
  "embedding"; with its "labels"/"label"), or else data.eval_split's examples' (data.embedding_key)
  with their labels."""
  options = config.sampling
  if held_out_embeddings(config):
    where = config.data.eval_split
    source = sources.open_source(config.data, where)
    count = min(num_samples, len(source))
    examples = [source[i] for i in range(count)]
    embeddings = np.stack([sources.as_embedding(e["embedding"]) for e in examples])
    labels = np.asarray([e["label"] for e in examples])
  elif options.get("prior_workdir"):
    where = options.prior_workdir
    prior_config = workdir_config(where)
    if prior_config.get("family") != "prior":
      raise ValueError(
        f"sampling.prior_workdir={where} trained config.family={prior_config.get('family')!r}, "
        "not a diffusion prior (config.family='prior')."
      )
    num_classes = prior_config.model.get("num_classes")
    labels = None
    if num_classes:
      labels = class_rows(num_samples, options.labels or range(num_classes))
    prior_params, _ = restore_ema_params(prior_config, where, mesh)
    embeddings, labels = generate(
      prior_config, prior_params, num_samples, mesh, where, families.Cond(label=labels)
    )
    labels = labels if num_classes else None
  else:
    where = options.embedding_file
    arrays = files.load_npz(where)
    name = next((n for n in ("embeddings", "embedding") if n in arrays), None)
    if name is None:
      raise ValueError(f"{where} has no 'embeddings' or 'embedding'; it has {', '.join(arrays)}.")
    embeddings = arrays[name]
    labels = arrays.get("labels", arrays.get("label"))
  embeddings = np.asarray(embeddings, np.float32)
  width = config.model.embedding_dim
  if embeddings.ndim != 2 or embeddings.shape[1] != width:
    raise ValueError(
      f"Embeddings must be [N, model.embedding_dim={width}]; got {embeddings.shape} from {where}."
    )
  rows = np.arange(num_samples) % len(embeddings)
  return embeddings[rows], (None if labels is None else np.asarray(labels, np.int32)[rows])


def conditioning_inputs(
  config: ml_collections.ConfigDict,
  family: families.Family,
  num_samples: int,
  mesh=None,
  cascade: bool = True,
  params=None,
) -> families.Cond:
  """What the family's samples are conditioned on besides labels chosen for them (numpy rows
  [num_samples, …]): a super-resolution model's low-resolution images in [-1, 1] with the labels
  they come with (`low_res_inputs`), a context-conditional model's contexts
  (`generation_contexts`), a representation's codes of held-out images under `params` with their
  labels (`represented_inputs`), an embedding-conditioned decoder's embeddings with their labels
  (`embedding_inputs`: a prior's samples, a file, the held-out examples')."""
  cond = families.Cond()
  if "embedding" in family.conditions and family.represent is not None:
    embedding, labels = represented_inputs(config, family, params, num_samples)
    cond = cond._replace(embedding=embedding, label=labels)
  elif "embedding" in family.conditions:
    embedding, labels = embedding_inputs(config, num_samples, mesh)
    cond = cond._replace(embedding=embedding, label=labels)
  if "low_res" in family.conditions:
    size = config.super_res.low_res_size
    low_res, labels = low_res_inputs(config, size, num_samples, mesh, cascade)
    cond = cond._replace(low_res=low_res, label=labels)
  if "context" in family.conditions:
    cond = cond._replace(context=generation_contexts(config, num_samples))
  return cond


def display_labels(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
  """The labels of sample grids and --mode=sample: class by class (`sampling.labels`, default every
  class) for a class-conditional model, None for an unconditional one."""
  num_classes = config.model.get("num_classes") or 0
  if not num_classes:
    return None
  return class_rows(num_samples, config.sampling.labels or range(num_classes))


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was written with (its config.json: training's, or the converter's), read
  onto the current defaults (`configs.workdir.load`)."""
  return workdir_configs.load(workdir)


def load_classifier(workdir: str, mesh):
  """The noisy classifier trained in `workdir` (its config.json and newest checkpoint) -> (module,
  params)."""
  classifier_config = workdir_config(workdir)
  if classifier_config.get("family") != "classifier":
    raise ValueError(
      f"{workdir} trained config.family={classifier_config.get('family')!r}, not a noisy "
      "classifier (config.family='classifier')."
    )
  params, _ = restore_ema_params(classifier_config, workdir, mesh)
  return families.get_family(classifier_config).model, params


def random_labels(rng: jax.Array, num_samples: int, num_classes: int) -> np.ndarray:
  """Label i uniform in [0, num_classes), drawn from sample i's key alone (as its noise)."""
  keys = sample_keys(rng, 0, num_samples)
  draw = lambda key: jax.random.randint(jax.random.fold_in(key, _LABEL_STREAM), (), 0, num_classes)
  return np.asarray(jax.vmap(draw)(keys), np.int32)


# fold_in index of a sample's label draw inside its key, apart from the sampler's own streams
_LABEL_STREAM = 2**31 - 2


def generate(
  config: ml_collections.ConfigDict,
  ema_params,
  num_samples: int,
  mesh,
  workdir: str | None = None,
  cond: families.Cond | None = None,
  x_T: np.ndarray | None = None,
  uint8: bool = True,
  autoencoder=latent.RUNS_OWN,
) -> tuple[np.ndarray, np.ndarray]:
  """`num_samples` samples of the run `config` in batches of `sampling.batch_size` spread over
  every device of every host, with progress and ETA -> (uint8 images [N, H, W, C] (a prior's:
  float32 embeddings [N, D]), labels [N]; zeros for an unconditional, unguided model).

  Sample i comes from key i of `config.seed` alone (`make_sample_fn`), and so does its label where
  `cond` gives none (uniform over the classes of a class-conditional or classifier-guided model):
  the samples do not depend on the device count or the batch size. `cond` (rows [N, …]) gives what
  the samples are conditioned on; the fields of `family.conditions` it lacks come from
  `conditioning_inputs` (a context-conditional model's contexts, a super-resolution model's
  low-resolution images with their labels). `workdir` holds what the family's sampler reads there
  (an ARDM's loss components for parallel decoding). `x_T` [N, H, W, C]: the samples' initial
  noise (else drawn from their keys); `uint8` False: images as the sampler's floats in [-1, 1].
  `autoencoder`: a latent run's, where the caller has loaded it."""
  sampling_config = config.sampling
  batch = sampling_config.batch_size
  guide, guide_params = None, None
  if sampling_config.classifier_workdir and sampling_config.classifier_scale:
    guide, guide_params = load_classifier(sampling_config.classifier_workdir, mesh)
  family = families.get_family(config)
  # one batch: progress per step (a host callback, which keeps the program from being saved);
  # several: per batch with an ETA, and the compiled sampler is saved for a restarted job
  per_step, sample_fn = num_samples <= batch, None
  autoencoder = latent.loaded(autoencoder, config, mesh)  # a latent run's samples are decoded
  rng = run_rngs(config.seed)["sample"]
  cond = cond or families.Cond()
  missing = [name for name in family.conditions if getattr(cond, name) is None]
  if set(missing) - {"label"}:
    inputs = conditioning_inputs(config, family, num_samples, mesh, params=ema_params)
    cond = cond._replace(**{name: getattr(inputs, name) for name in missing})
  num_classes = guide.num_classes if guide is not None else config.model.get("num_classes")
  if cond.label is None and num_classes:
    cond = cond._replace(label=random_labels(rng, num_samples, num_classes))
  labels = cond.label
  all_images, start_time = [], time.perf_counter()
  for first in range(0, num_samples, batch):
    noise = None if x_T is None else pad_rows(x_T[first : first + batch], batch)
    args = (ema_params, rng, batch_rows(cond, first, batch), guide_params, None, first, noise)
    if sample_fn is None:
      sample_fn = (
        make_sample_fn(family, batch, mesh, progress=True, guide=guide, workdir=workdir)
        if per_step
        else saved_sample_fn(config, family, batch, mesh, args, guide, workdir)
      )
    x = sample_fn(*args)
    x = parallel.to_host(latent.images_of(autoencoder, x) if uint8 else x)
    quantize = uint8 and family.samples == "images"
    all_images.append(pixels.to_uint8(x) if quantize else np.asarray(x))
    done, elapsed = min(first + batch, num_samples), time.perf_counter() - start_time
    logging.info(
      "Sampled %d / %d (%.1f images/s, ETA %s).",
      done,
      num_samples,
      done / elapsed,
      datetime.timedelta(seconds=round(elapsed / done * (num_samples - done))),
    )
  images = np.concatenate(all_images)[:num_samples]
  return images, (labels if labels is not None else np.zeros(len(images), np.int32))


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes workdir/samples/samples_<step>.npz (uint8 "images" [N, H, W, C], int "labels" [N], a
  context-conditional model's "contexts" [N, L, D], a super-resolution model's uint8 "low_res"
  inputs [N, s, s, C]) and a PNG grid of the first 64 (a class-conditional model's: one row per
  class, `display_labels`, with the config's guidance scale; a super-resolution model's: each
  input, enlarged, beside its sample); returns the npz path."""
  validate_config(config)
  mesh = parallel.make_mesh()
  ema_params, step = restore_ema_params(config, workdir, mesh)
  num_samples = config.sampling.num_samples
  family = families.get_family(config)
  cond = conditioning_inputs(config, family, num_samples, mesh, params=ema_params)
  if cond.label is None:
    cond = cond._replace(label=display_labels(config, num_samples))
  images, labels = generate(config, ema_params, num_samples, mesh, workdir, cond)
  out_dir = os.path.join(workdir, "samples")
  path = os.path.join(out_dir, f"samples_{step}.npz")
  if jax.process_index() == 0 and family.samples == "embeddings":
    files.save_npz(path, embeddings=images, labels=labels)
    logging.info("Wrote %d embeddings [%d] to %s.", *images.shape, path)
  elif jax.process_index() == 0:
    shown, columns = pixels.from_uint8(images[:64]), row_length(labels[:64])
    extra = {} if cond.context is None else {"contexts": cond.context}
    if cond.embedding is not None:
      extra = {"embeddings": np.asarray(cond.embedding)}
    if cond.low_res is not None:
      extra = {"low_res": pixels.to_uint8(cond.low_res)}
      factor = config.data.image_size // cond.low_res.shape[1]
      enlarged = np.repeat(np.repeat(cond.low_res[:32], factor, axis=1), factor, axis=2)
      shown, columns = np.stack([enlarged, shown[:32]], axis=1).reshape(-1, *shown.shape[1:]), 8
    files.save_npz(path, images=images, labels=labels, **extra)
    image_utils.save_png(
      image_utils.grid_uint8(shown, columns=columns),
      os.path.join(out_dir, f"samples_{step}.png"),
    )
    logging.info("Wrote %d samples to %s.", len(images), path)
  return path


# fold_in index of a reflow pair's noise draw, apart from the sampler's streams
_NOISE_STREAM = 2**31 - 3


def reflow(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`--mode=reflow` of a flow run: sampling.num_samples pairs of noise and the image its ODE
  (the run's deterministic sampler, guidance as configured) carries it to, to
  workdir/reflow/pairs_<step>.npz (float32 "noise" and "image" [N, H, W, C], a class-conditional
  model's "label" [N]): the data (data.dataset="reflow", data.path) of a 2-rectified flow (Liu et
  al. 2023), which learns straighter paths from the same coupling. Returns the npz path."""
  validate_config(config)
  if config.family != "flow":
    raise InvalidConfigError(
      f"--mode=reflow pairs a flow's noise with its ODE's images; config.family={config.family!r}."
    )
  if config.sampling.sampler == "sde":
    raise InvalidConfigError(
      "--mode=reflow pairs noise with the deterministic ODE's image: sampling.sampler='sde' adds "
      "noise on the way; use euler, heun or ode."
    )
  mesh = parallel.make_mesh()
  ema_params, step = restore_ema_params(config, workdir, mesh)
  count = config.sampling.num_samples
  keys = sample_keys(jax.random.fold_in(run_rngs(config.seed)["sample"], _NOISE_STREAM), 0, count)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  noise = np.asarray(jax.vmap(lambda key: jax.random.normal(key, shape))(keys))
  images, labels = generate(config, ema_params, count, mesh, workdir, x_T=noise, uint8=False)
  path = os.path.join(workdir, "reflow", f"pairs_{step}.npz")
  if jax.process_index() == 0:
    extra = {"label": labels} if config.model.get("num_classes") else {}
    files.save_npz(path, image=images.astype(np.float32), noise=noise, **extra)
    logging.info("Wrote %d reflow pairs to %s (train on them: data.dataset='reflow').", count, path)
  return path


def row_length(labels: np.ndarray) -> int | None:
  """The grid columns of labels in rows of one class (`class_rows`); None: as square as can be."""
  changes = np.flatnonzero(np.diff(labels))
  return int(changes[0]) + 1 if len(changes) else None
