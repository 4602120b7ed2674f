"""`--mode=edit` and `--mode=interpolate` on the newest checkpoint's EMA parameters.

edit (config.edit): inpainting, colorization or SDEdit (`ddpm_jax.editing`) of input images with the
run's sampler (config.sampling: the Gaussian family's ddpm, ddim, euler, heun, euler_ancestral; a
score SDE's pc or those σ-space solvers; EDM's), writing workdir/edits/<task>_<step>.npz (uint8
"inputs", "conditions", "results" [N, H, W, C], "labels" [N]) and a PNG grid of one row per image:
input | condition | result, the condition being the mask (white: known) for inpaint, the grey image
for colorize, the input noised to t0 for sdedit.

interpolate (config.interpolate): two images DDIM-encoded (or two latents drawn from config.seed),
slerp between them (DDIM §5.3), decoded by DDIM's ODE (η = 0), to workdir/edits/interpolate_<step>
.npz ("frames", "latents", "alphas", and "inputs" where given) and a PNG strip. A learned
representation (config.family="representation") interpolates the two images' codes z linearly
beside their x_T (Preechakul et al. §4.1; without interpolate.input_file, data.eval_split's first
two images), an embedding-conditioned decoder (model.embedding_dim) slerps two embeddings (unCLIP
§3.1; as --mode=sample takes them: a prior's samples, sampling.embedding_file, or data.eval_split's
first two examples', whose images it DDIM-encodes), and the frames also hold "codes". With
representation.manipulate_class, a representation also moves each image's code along a linear
probe's normal for that class (Preechakul et al. §5.2), decoded from the image's own x_T at each of
representation.manipulate_scales: "manipulated" [2, S, H, W, C], "manipulate_scales", and
manipulate_<step>.png (a row per image: the input, then the scales).

variations (config.variations): the first variations.num_images embeddings (a representation's
codes of held-out images; a decoder's as --mode=sample takes them) each decoded from
variations.num_variations noises by the run's sampler, to workdir/edits/variations_<step>.npz
("images" [n·k, H, W, C], "embeddings" [n, D], "labels" [n·k], and "inputs" where the embeddings
are held-out images') and a PNG grid of one row per embedding (its image first where known).
"""

from __future__ import annotations

import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from ddpm_jax import editing, families, pixels, sampling
from ddpm_jax.data import transforms, workers
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.evaluation import representation as representation_eval
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.jobs.train_state import run_rngs
from ddpm_jax.runtime import files, parallel


def _image_array(path: str, image_size: int, channels: int, resize: str) -> np.ndarray:
  with Image.open(epath.Path(path).open("rb")) as image:
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  return transforms.resize_uint8(array, image_size, channels, resize)


def load_images(path: str, data_config) -> tuple[np.ndarray, np.ndarray | None]:
  """uint8 images [N, S, S, C] at the data's size and channels (centre-cropped and resized as the
  data are), with their labels where the file has them: an npz of "images" (or guided-diffusion's
  "arr_0") [+ "labels" / "arr_1"], a PNG, PNGs separated by commas, or a directory of PNGs."""
  size, channels, resize = data_config.image_size, data_config.num_channels, data_config.resize
  if path.endswith(".npz"):
    arrays = files.load_npz(path)
    if "images" not in arrays and "arr_0" not in arrays:
      raise ValueError(f"{path} has no 'images' (or 'arr_0') array; it has {sorted(arrays)}.")
    raw = np.asarray(arrays["images"] if "images" in arrays else arrays["arr_0"])
    if raw.dtype != np.uint8 or raw.ndim != 4:
      raise ValueError(f"{path}: images must be uint8 [N, H, W, C]; got {raw.dtype} {raw.shape}.")
    images = np.stack([transforms.resize_uint8(x, size, channels, resize) for x in raw])
    labels = arrays.get("labels", arrays.get("arr_1"))
    return images, None if labels is None else np.asarray(labels, np.int32)
  if epath.Path(path).is_dir():
    paths = sorted(str(p) for p in epath.Path(path).iterdir() if p.suffix.lower() == ".png")
    if not paths:
      raise FileNotFoundError(f"No .png files in {path}.")
  else:
    paths = path.split(",")
  return np.stack([_image_array(p, size, channels, resize) for p in paths]), None


def load_mask(edit_config, data_config, num_images: int) -> np.ndarray:
  """The inpainting mask [N or 1, S, S, 1 or C], 1 where known: edit.mask_file (an npz "mask", or
  a PNG, white = known, ≥ 128) or else the built-in edit.mask."""
  size = data_config.image_size
  path = edit_config.mask_file
  if not path:
    return editing.region_mask(edit_config.mask, size)
  if path.endswith(".npz"):
    mask = np.asarray(files.load_npz(path)["mask"], np.float32)
    mask = mask[..., None] if mask.ndim == 3 else mask
  else:
    mask = (_image_array(path, size, 1, "bilinear") >= 128).astype(np.float32)[None]
  channels = data_config.num_channels
  if (
    mask.ndim != 4
    or mask.shape[1:3] != (size, size)
    or mask.shape[0] not in (1, num_images)
    or mask.shape[-1] not in (1, channels)
  ):
    raise ValueError(
      f"{path}: the mask must be [1 or {num_images}, {size}, {size}, 1 or {channels}]; got "
      f"{mask.shape}."
    )
  return (mask > 0.5).astype(np.float32)


def _labels(config, given: np.ndarray | None, count: int, guide) -> np.ndarray | None:
  """A conditional (or classifier-guided) model's labels: those of the inputs, else
  sampling.labels in turn (default every class)."""
  num_classes = guide.num_classes if guide is not None else config.model.get("num_classes")
  if not num_classes:
    return None
  if given is not None:
    return np.asarray(given, np.int32)[:count]
  return sample_lib.class_rows(count, config.sampling.labels or range(num_classes))


def _setup(config: ml_collections.ConfigDict, workdir: str, mode: str):
  validate_config(config)
  if config.get(mode) is None:
    raise ValueError(
      f"This config has no `{mode}` block (a config.json written before --mode={mode}): run with "
      "the config file it was trained with."
    )
  family = families.get_family(config)
  # interpolate and variations: a representation's codes, a decoder's embeddings
  own_codes = {"embedding"} if mode in ("interpolate", "variations") else set()
  if set(family.conditions) - {"label"} - own_codes:
    raise ValueError(
      f"--mode={mode} runs on unconditional and class-conditional models (and interpolates a "
      "representation's codes or a decoder's embeddings); this one also takes low-resolution "
      "images, contexts or embeddings."
    )
  mesh = parallel.make_mesh()
  params, step = sample_lib.restore_ema_params(config, workdir, mesh)
  return family, mesh, params, step


def edit(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=edit: see the module docstring; returns the npz path."""
  family, mesh, params, step = _setup(config, workdir, "edit")
  options, data = config.edit, config.data
  if family.make_trajectory is None:
    raise ValueError(f"config.family={config.family!r} does not sample from noise: it cannot edit.")
  if options.task == "colorize" and data.num_channels != 3:
    raise ValueError(
      f"edit.task='colorize' needs colour data (data.num_channels=3), not {data.num_channels}."
    )
  guide, guide_params = None, None
  if config.sampling.classifier_workdir and config.sampling.classifier_scale:
    guide, guide_params = sample_lib.load_classifier(config.sampling.classifier_workdir, mesh)
  make_trajectory = family.make_trajectory(guide=guide)  # refuses a sampler it has none for
  if options.get("input_file"):
    inputs, given_labels = load_images(options.input_file, data)
  else:
    inputs, given_labels = sample_lib.eval_split_images(config, options.num_images)
  count = len(inputs)
  labels = _labels(config, given_labels, count, guide)
  mask = load_mask(options, data, count) if options.task == "inpaint" else None
  x = pixels.from_uint8(inputs)

  def run(params, guide_params, rng, x, mask, labels):
    trajectory = make_trajectory(params, families.Cond(label=labels), guide_params)
    progress = f"{options.task} ({config.sampling.sampler})"
    if options.task == "inpaint":
      return editing.inpaint_along(
        trajectory, rng, x, mask, options.resample, options.jump, progress
      )
    if options.task == "colorize":
      gray = jnp.mean(x, axis=-1, keepdims=True)
      return editing.colorize_along(
        trajectory, rng, gray, x.shape[-1], options.resample, options.jump, progress
      )
    return editing.sdedit_along(trajectory, rng, x, options.strength, progress)

  sharding = parallel.data_sharding(mesh)
  batch = -(-count // mesh.size) * mesh.size  # padded to a whole number of rows per device
  padded = lambda a: None if a is None else jax.device_put(sample_lib.pad_rows(a, batch), sharding)
  rng = run_rngs(config.seed)["sample"]
  mask_rows = None if mask is None else np.broadcast_to(mask, (count, *mask.shape[1:]))
  logging.info("Editing %d images (%s) with %s.", count, options.task, config.sampling.sampler)
  results = jax.jit(run, out_shardings=sharding)(
    params, guide_params, rng, padded(x), padded(mask_rows), padded(labels)
  )
  results = pixels.to_uint8(parallel.to_host(results))[:count]
  conditions = _conditions(options, x, mask_rows, rng, make_trajectory, params, labels, batch)
  path = os.path.join(workdir, "edits", f"{options.task}_{step}.npz")
  if jax.process_index() == 0:
    label_rows = labels if labels is not None else np.zeros(count, np.int32)
    files.save_npz(path, inputs=inputs, conditions=conditions, results=results, labels=label_rows)
    rows = np.stack([inputs, conditions, results], axis=1).reshape(-1, *inputs.shape[1:])
    image_utils.save_png(
      image_utils.grid_uint8(pixels.from_uint8(rows), columns=3), path[: -len(".npz")] + ".png"
    )
    logging.info("Wrote %d edited images to %s.", count, path)
  return path


def _conditions(options, x, mask, rng, make_trajectory, params, labels, batch) -> np.ndarray:
  """What each edit saw of its input, uint8: the mask, the grey image, the input noised to t0."""
  if options.task == "inpaint":
    return pixels.to_uint8(np.broadcast_to(2.0 * mask - 1.0, x.shape))
  if options.task == "colorize":
    return pixels.to_uint8(np.broadcast_to(np.mean(x, axis=-1, keepdims=True), x.shape))
  label = None if labels is None else jnp.asarray(labels)
  trajectory = make_trajectory(params, families.Cond(label=label))
  start = editing.sdedit_start(trajectory.num_steps, options.strength)
  # the walk's own draw (editing's start at level `start`), on the padded batch it ran on
  key = jax.random.fold_in(rng, sampling.PRIOR_NOISE)
  noise = np.asarray(jax.random.normal(key, (batch, *x.shape[1:])))[: len(x)]
  scale, noise_std = (np.asarray(a, np.float32)[start] for a in trajectory[:2])
  return pixels.to_uint8(scale * x + noise_std * noise)


def probe_direction(config: ml_collections.ConfigDict, family, params) -> np.ndarray | None:
  """A representation's step along the probe normal of representation.manipulate_class (codes of
  the train split's first num_probe_images), or None where no manipulation is asked for."""
  options = config.get("representation")
  if family.represent is None or options is None or options.manipulate_class is None:
    return None
  images, labels = workers.split_images(
    config.data, config.data.train_split, options.num_probe_images
  )
  if labels is None or options.manipulate_class not in set(np.asarray(labels).tolist()):
    raise ValueError(
      f"representation.manipulate_class={options.manipulate_class}: the probe needs labelled "
      f"images of that class in data.train_split={config.data.train_split!r}'s first "
      f"{options.num_probe_images}."
    )
  logging.info("Fitting the probe of class %d on %d codes.", options.manipulate_class, len(images))
  codes = sample_lib.represent_all(family, params, images)
  return representation_eval.probe_direction(
    codes, labels, options.manipulate_class, options.probe_c
  )


def interpolate(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=interpolate: see the module docstring; returns the npz path."""
  family, mesh, params, step = _setup(config, workdir, "interpolate")
  options = config.interpolate
  if family.make_latent_codec is None:
    raise ValueError(
      f"--mode=interpolate needs a deterministic encoder (DDIM's or the probability-flow ODE's: "
      f"families gaussian, score_sde, edm), not config.family={config.family!r}."
    )
  num_steps = options.num_steps or config.sampling.num_steps or 50
  encode, decode = family.make_latent_codec(num_steps)
  shape = families.base.sample_shape(2, config.data)
  rng = run_rngs(config.seed)["sample"]
  inputs, given_labels = (
    load_images(options.input_file, config.data) if options.get("input_file") else (None, None)
  )
  if inputs is not None and len(inputs) != 2:
    raise ValueError(
      f"interpolate.input_file must hold two images; {options.input_file} has {len(inputs)}."
    )
  given_codes = None
  if family.represent is None and "embedding" in family.conditions:  # a decoder's embeddings
    if inputs is not None:
      raise ValueError(
        "An embedding-conditioned decoder interpolates embeddings, not interpolate.input_file's "
        "images (it has no encoder): give two embeddings in sampling.embedding_file."
      )
    given_codes, given_labels = sample_lib.embedding_inputs(config, 2, mesh)
    if sample_lib.held_out_embeddings(config):
      inputs = sample_lib.eval_split_images(config, 2)[0]  # the embeddings' images
  if inputs is None and family.represent is not None:  # codes need images
    inputs, given_labels = sample_lib.eval_split_images(config, 2)
  labels = _labels(config, given_labels, 2, None)
  label = None if labels is None else labels[:1]
  alphas = np.linspace(0.0, 1.0, options.num_frames)
  direction = probe_direction(config, family, params)
  scales = None if direction is None else np.asarray(config.representation.manipulate_scales)

  def run(params, rng, x, label, given_codes, direction):
    pair = families.Cond(label=None if label is None else jnp.repeat(label, 2))
    codes = frame_codes = None
    weights = jnp.asarray(alphas, jnp.float32)[:, None]
    if family.represent is not None:  # z of each image, interpolated linearly
      codes = family.represent(params, x)
      frame_codes = codes[:1] + weights * (codes[1:] - codes[:1])
      pair = pair._replace(embedding=codes)
    elif given_codes is not None:  # a decoder's embeddings, slerped (unCLIP §3.1)
      codes = given_codes
      frame_codes = sampling.slerp(codes[:1], codes[1:], weights)
      pair = pair._replace(embedding=codes)
    z = jax.random.normal(rng, shape) if x is None else encode(params, x, pair)
    weights = jnp.asarray(alphas, jnp.float32).reshape(-1, 1, 1, 1)
    frames_z = sampling.slerp(z[:1], z[1:], weights)
    frame_labels = None if label is None else jnp.repeat(label, len(alphas))
    frames = decode(params, frames_z, families.Cond(label=frame_labels, embedding=frame_codes))
    manipulated = None
    if direction is not None:  # each image's x_T, its code moved along the probe's normal
      moved = representation_eval.manipulate(codes, direction, jnp.asarray(scales, jnp.float32))
      moved_z = jnp.repeat(z, len(scales), axis=0)
      manipulated = decode(
        params, moved_z, families.Cond(embedding=moved.reshape(-1, codes.shape[1]))
      )
    return z, frames, codes, manipulated

  x = None if inputs is None else jnp.asarray(pixels.from_uint8(inputs))
  logging.info(
    "Interpolating in %d frames on %d steps of the deterministic sampler.", len(alphas), num_steps
  )
  latents, frames, codes, manipulated = jax.jit(run)(
    params, rng, x, None if label is None else jnp.asarray(label), given_codes, direction
  )
  frames = pixels.to_uint8(np.asarray(frames))
  path = os.path.join(workdir, "edits", f"interpolate_{step}.npz")
  if jax.process_index() == 0:
    extra = {} if inputs is None else {"inputs": inputs}
    if codes is not None:
      extra["codes"] = np.asarray(codes)
    if manipulated is not None:
      manipulated = pixels.to_uint8(np.asarray(manipulated)).reshape(2, len(scales), *x.shape[1:])
      extra.update(manipulated=manipulated, manipulate_scales=scales)
      rows = np.concatenate([inputs[:, None], manipulated], axis=1).reshape(-1, *x.shape[1:])
      image_utils.save_png(
        image_utils.grid_uint8(pixels.from_uint8(rows), columns=len(scales) + 1),
        os.path.join(workdir, "edits", f"manipulate_{step}.png"),
      )
    files.save_npz(path, frames=frames, latents=np.asarray(latents), alphas=alphas, **extra)
    strip = frames if inputs is None else np.concatenate([inputs[:1], frames, inputs[1:]])
    image_utils.save_png(
      image_utils.grid_uint8(pixels.from_uint8(strip), columns=len(strip)),
      path[: -len(".npz")] + ".png",
    )
    logging.info("Wrote %d frames to %s.", len(frames), path)
  return path


def variations(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=variations: see the module docstring; returns the npz path."""
  family, mesh, params, step = _setup(config, workdir, "variations")
  if "embedding" not in family.conditions:
    raise ValueError(
      "--mode=variations decodes embeddings: it needs an embedding-conditioned model "
      "(model.embedding_dim with family 'gaussian', or config.family='representation')."
    )
  count, per_image = config.variations.num_images, config.variations.num_variations
  inputs = None
  if family.represent is not None:
    embeddings, labels = sample_lib.represented_inputs(config, family, params, count)
    inputs = sample_lib.eval_split_images(config, count)[0]
  else:
    embeddings, labels = sample_lib.embedding_inputs(config, count, mesh)
    if sample_lib.held_out_embeddings(config):
      inputs = sample_lib.eval_split_images(config, count)[0]
  repeat = lambda rows: None if rows is None else np.repeat(rows, per_image, axis=0)
  cond = families.Cond(embedding=repeat(embeddings), label=repeat(labels))
  logging.info("Decoding %d embeddings from %d noises each.", count, per_image)
  images, labels = sample_lib.generate(config, params, count * per_image, mesh, workdir, cond)
  path = os.path.join(workdir, "edits", f"variations_{step}.npz")
  if jax.process_index() == 0:
    extra = {} if inputs is None else {"inputs": inputs}
    files.save_npz(path, images=images, embeddings=embeddings, labels=labels, **extra)
    rows = images.reshape(count, per_image, *images.shape[1:])
    if inputs is not None:
      rows = np.concatenate([inputs[:count, None], rows], axis=1)
    image_utils.save_png(
      image_utils.grid_uint8(pixels.from_uint8(rows.reshape(-1, *images.shape[1:])), rows.shape[1]),
      path[: -len(".npz")] + ".png",
    )
    logging.info("Wrote %d variations to %s.", len(images), path)
  return path
