"""Config validation: every impossible or inconsistent setting in one message, before anything
compiles. The shared blocks (data, model shape, optim, training) are checked here, each family's own
block by its module's `validate`."""

from __future__ import annotations

import jax
import ml_collections

from ddpm_jax import editing, families, input_pipeline, models

NONFINITE_POLICIES = ("stop", "skip")  # training.nonfinite


def replaced_selectors(config: ml_collections.ConfigDict) -> list[str]:
  """The fields that chose the family before `config.family` existed, where an old config still sets
  them."""
  found = []
  if "family" not in config:
    found.append(f"config.family is missing: set it to one of {', '.join(families.FAMILIES)}.")
  if "name" in config.get("sde", {}):
    found.append(
      f"config.sde.name={config.sde.name!r} was replaced by config.family='score_sde' with "
      "config.sde.type."
    )
  if "schedule" in config.get("vdm", {}):
    found.append(
      f"config.vdm.schedule={config.vdm.schedule!r} was replaced by config.family='vdm' with "
      "config.vdm.noise_schedule."
    )
  if "enabled" in config.get("ardm", {}):
    found.append("config.ardm.enabled was replaced by config.family='ardm'.")
  if config.model.get("name") == "classifier" and config.get("family") != "classifier":
    found.append("model.name='classifier' is trained by config.family='classifier'.")
  return found


def _data_problems(data: ml_collections.ConfigDict, num_classes: int) -> list[str]:
  spec = input_pipeline.dataset_spec(data.dataset)
  if spec is None:
    return [
      f"Unknown data.dataset {data.dataset!r}; known: {', '.join(input_pipeline.DATASETS)} (tfds "
      "names may carry a /config, e.g. celeb_a_hq/256)."
    ]
  problems = []
  for field in ("train_split", "eval_split"):
    split = data.get(field, "train")
    if input_pipeline.split_name(split) not in spec.splits:
      problems.append(
        f"data.{field}={split!r}: {data.dataset} has the splits {', '.join(spec.splits)} "
        f"(its held-out split: {spec.eval_split!r})."
      )
  if spec.num_classes >= 0:  # an image_folder's classes are known once it is opened
    problems += input_pipeline.label_problems(data.dataset, spec.num_classes, num_classes)
  if 0 < spec.num_classes < num_classes:
    problems.append(
      f"model.num_classes={num_classes}, but data.dataset={data.dataset!r} has "
      f"{spec.num_classes} classes."
    )
  if data.get("resize", "bilinear") not in input_pipeline.RESIZE_METHODS:
    problems.append(
      f"Unknown data.resize {data.resize!r}; known: {', '.join(input_pipeline.RESIZE_METHODS)}."
    )
  if data.get("num_workers", 0) < 0:
    problems.append(f"data.num_workers={data.num_workers} must be 0 or more.")
  return problems


def _shared_problems(config: ml_collections.ConfigDict) -> list[str]:
  data, model, optim, training = config.data, config.model, config.optim, config.training
  problems = []
  devices = jax.device_count()
  if training.batch_size % devices:
    problems.append(
      f"training.batch_size={training.batch_size} is not divisible by the {devices} devices."
    )
  if training.batch_size % (devices * optim.grad_accum_steps):
    problems.append(
      f"training.batch_size={training.batch_size} does not split into optim.grad_accum_steps="
      f"{optim.grad_accum_steps} micro-batches over {devices} devices."
    )
  problems += _data_problems(data, model.get("num_classes") or 0)
  if model.get("num_classes") and not model.get("null_class", True):
    for field, value in (
      ("training.label_dropout", training.label_dropout),
      ("sampling.guidance_scale", config.sampling.guidance_scale),
    ):
      if value:
        problems.append(
          f"{field}={value} needs the null label: this model has model.null_class=False."
        )
  context_key, context_dim = data.get("context_key", ""), model.get("context_dim")
  if bool(context_key) != bool(context_dim):
    problems.append(
      f"data.context_key={context_key!r} and model.context_dim={context_dim} go together: a "
      "context-conditional model needs both, an unconditional one neither."
    )
  if model.get("name", "unet") not in models.MODELS:
    problems.append(f"Unknown model.name {model.name!r}; known: {', '.join(models.MODELS)}.")
  if model.get("dtype") == "float16":
    problems.append(
      "model.dtype='float16' would need loss scaling, which this project does not do (its range "
      "underflows small gradients); use 'bfloat16' (float32's range) or 'float32'."
    )
  if model.embedding_type not in models.EMBEDDING_TYPES:
    problems.append(
      f"Unknown model.embedding_type {model.embedding_type!r}; valid: "
      f"{', '.join(models.EMBEDDING_TYPES)}."
    )
  levels = len(model.ch_mult)
  if data.image_size % 2 ** (levels - 1):
    problems.append(
      f"data.image_size={data.image_size} cannot be halved {levels - 1} times "
      f"(model.ch_mult={model.ch_mult})."
    )
  resolutions = [data.image_size // 2**i for i in range(levels)]
  missing = [r for r in model.attn_resolutions if r not in resolutions]
  if missing:
    problems.append(
      f"model.attn_resolutions {missing} are not resolutions of this model; it has {resolutions}."
    )
  widths = {model.ch * m for m in model.ch_mult}
  if any(w % 32 for w in widths):
    problems.append(
      f"Every width model.ch·ch_mult must be divisible by 32 (GroupNorm(32) groups); got "
      f"{sorted(widths)}."
    )
  if not 0.0 <= optim.ema_decay < 1.0:
    problems.append(f"optim.ema_decay={optim.ema_decay} must be in [0, 1).")
  if optim.lr <= 0:
    problems.append(f"optim.lr={optim.lr} must be positive.")
  intervals = (
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_steps",
    "sample_every_steps",
  )
  if training.get("nonfinite", "stop") not in NONFINITE_POLICIES:
    problems.append(
      f"Unknown training.nonfinite {training.nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}."
    )
  if training.get("max_nonfinite_skips", 0) < 0:
    problems.append(f"training.max_nonfinite_skips={training.max_nonfinite_skips} must be >= 0.")
  if min(training[name] for name in intervals) <= 0:
    problems.append(f"training.{', '.join(intervals)} must be positive.")
  return problems


def _mode_problems(config: ml_collections.ConfigDict) -> list[str]:
  """--mode=edit's and --mode=interpolate's config.edit and config.interpolate (none where a
  config.json written before them lacks the blocks)."""
  problems = []
  edit = config.get("edit")
  if edit is not None:
    if edit.task not in editing.TASKS:
      problems.append(f"Unknown edit.task {edit.task!r}; valid: {', '.join(editing.TASKS)}.")
    if not edit.get("mask_file") and edit.mask not in editing.MASK_REGIONS:
      problems.append(f"Unknown edit.mask {edit.mask!r}; valid: {', '.join(editing.MASK_REGIONS)}.")
    for field in ("resample", "jump", "num_images"):
      if edit[field] < 1:
        problems.append(f"edit.{field}={edit[field]} must be at least 1.")
    if not 0.0 < edit.strength <= 1.0:
      problems.append(f"edit.strength={edit.strength} must lie in (0, 1].")
  interpolate = config.get("interpolate")
  if interpolate is not None:
    if interpolate.num_frames < 2:
      problems.append(f"interpolate.num_frames={interpolate.num_frames} must be at least 2.")
    if interpolate.num_steps is not None and interpolate.num_steps < 1:
      problems.append(f"interpolate.num_steps={interpolate.num_steps} must be at least 1.")
  return problems


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every problem of `config` (one line for a config of the old
  selectors)."""
  replaced = replaced_selectors(config)
  if replaced:
    raise ValueError(" ".join(replaced))
  problems = _shared_problems(config) + _mode_problems(config)
  if config.family in families.FAMILIES:
    problems += families.family_module(config.family).validate(config)
  else:
    problems.append(
      f"Unknown config.family {config.family!r}; known: {', '.join(families.FAMILIES)}."
    )
  if problems:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
