"""Config validation: every impossible or inconsistent setting in one message, before anything
compiles. The shared blocks (data, model shape, optim, training) are checked here, each family's own
block by its module's `validate`."""

from __future__ import annotations

from absl import logging
import jax
import ml_collections

from ddpm_jax import diffusion, editing, families, models, sampling, schedules
from ddpm_jax.data import sources, transforms
from ddpm_jax.families import base, latent
from ddpm_jax.models import autoencoder_kl, dit, layers, unet
from ddpm_jax.runtime.errors import InvalidConfigError

NONFINITE_POLICIES = ("stop", "skip")  # training.nonfinite


# The numeric fields' legal ranges, checked before anything else (the later checks assume them):
# field -> (lowest, lowest included, highest, highest included); None: unbounded. Fields a config
# does not have are skipped; None values (placeholders: "the default") too. The shared blocks'
# here, each family's own block's beside its code (the family module's RANGES).
RANGES = {
  **dict.fromkeys(
    [
      "data.image_size",
      "data.num_channels",
      "diffusion.num_timesteps",
      "model.ch",
      "model.patch_size",
      "model.depth",
      "model.hidden_size",
      "model.num_heads",
      "model.num_res_blocks",
      "model.out_channels",
      "optim.grad_accum_steps",
      "sampling.batch_size",
      "sampling.num_steps",
      "training.batch_size",
      "training.keep_checkpoints",
      "model.context_dim",
      "model.embedding_dim",
      "interpolate.num_steps",
      "variations.num_images",
      "variations.num_variations",
    ],
    (1, True, None, False),
  ),
  **dict.fromkeys(
    [
      "data.num_workers",
      "eval.bpd_num_batches",
      "eval.num_fid_samples",
      "eval.num_loss_batches",
      "eval.num_reference_images",
      "eval.precision_recall_images",
      "model.num_classes",
      "model.embedding_tokens",
      "optim.grad_clip",
      "optim.warmup_steps",
      "optim.weight_decay",
      "sampling.classifier_scale",
      "sampling.eta",
      "sampling.guidance_scale",
      "sampling.guidance_channels",
      "sampling.n_corrector",
      "sampling.num_samples",
      "sampling.s_churn",
      "sampling.s_noise",
      "sampling.s_tmin",
      "sampling.s_tmax",
      "sampling.snr",
      "training.max_nonfinite_skips",
      "training.num_train_steps",
    ],
    (0, True, None, False),
  ),
  **dict.fromkeys(
    [
      "model.norm_eps",
      "model.mlp_norm_eps",
      "optim.lr",
      "sampling.ode_tolerance",
      "sampling.rho",
      "sampling.sigma_max",
      "sampling.sigma_min",
      "sampling.step_lr",
      "training.checkpoint_every_steps",
      "training.eval_every_steps",
      "training.log_every_steps",
      "training.sample_every_steps",
    ],
    (0, False, None, False),
  ),
  **dict.fromkeys(["model.dropout", "optim.beta2", "optim.ema_decay"], (0, True, 1, False)),
  "model.mlp_ratio": (0, False, 64, True),  # DiT's MLP width over its width (4)
  "latent.scaling_factor": (0, False, None, False),
  **dict.fromkeys(["training.label_dropout", "sampling.guidance_rescale"], (0, True, 1, True)),
}
RANGES |= {
  field: bounds
  for name in families.FAMILIES
  for field, bounds in getattr(families.family_module(name), "RANGES", {}).items()
}


# tuple fields -> (their elements' lowest value, may be empty)
SEQUENCES = {
  "model.ch_mult": (1, False),
  "model.attn_resolutions": (1, True),
  "model.fourier_features": (None, True),
  "model.fir_kernel": (None, True),
  "sampling.labels": (0, True),
  "representation.encoder_ch_mult": (1, False),
  "model.block_out_channels": (1, False),  # the autoencoder's widths
}


_ABSENT = object()


def _value(config: ml_collections.ConfigDict, field: str):
  """config's `field` ("block.name" or a top-level name), or _ABSENT where it has none."""
  block, _, name = field.rpartition(".")
  if block and block not in config:
    return _ABSENT
  parent = config[block] if block else config
  return parent[name] if name in parent else _ABSENT


def _sequence_problems(config: ml_collections.ConfigDict) -> list[str]:
  problems = []
  for field, (lowest, may_be_empty) in SEQUENCES.items():
    value = _value(config, field)
    if value is _ABSENT:
      continue
    numbers = isinstance(value, (tuple, list)) and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not numbers or (not value and not may_be_empty):
      empty = "" if may_be_empty else "non-empty "
      problems.append(f"{field}={value!r} must be a {empty}tuple of numbers.")
    elif lowest is not None and any(v < lowest for v in value):
      problems.append(f"{field}={value!r}: every entry must be >= {lowest}.")
  return problems


def choices() -> dict[str, tuple[str, ...]]:
  """The enumerated fields that other checks read (so checked first): field -> valid values."""
  from ddpm_jax.families import distill, gaussian  # (families import this module's users lazily)

  return {
    "family": tuple(families.FAMILIES),
    "model.name": tuple(models.MODELS),
    "model.embedding_type": tuple(models.EMBEDDING_TYPES),
    "model.dtype": models.COMPUTE_DTYPES,
    "model.conv_impl": layers.CONV_IMPLS,
    "model.downsample_padding": layers.CONV_PADDINGS,
    "model.progressive": unet.PROGRESSIVE_OUTPUTS,
    "model.progressive_input": unet.PROGRESSIVE_INPUTS,
    "data.resize": transforms.RESIZE_METHODS,
    "training.nonfinite": NONFINITE_POLICIES,
    "diffusion.beta_schedule": tuple(schedules.SCHEDULES),
    "diffusion.mean_type": diffusion.MEAN_TYPES,
    "diffusion.var_type": diffusion.VAR_TYPES,
    "diffusion.loss_type": diffusion.LOSS_TYPES,
    "diffusion.timestep_sampler": gaussian.TIMESTEP_SAMPLERS,
    "distill.student_mean_type": distill.STUDENT_MEAN_TYPES,
  }


def _choice_problems(config: ml_collections.ConfigDict) -> list[str]:
  problems = []
  for field, valid in choices().items():
    value = _value(config, field)
    if value is not _ABSENT and value not in valid:
      problems.append(f"Unknown {field} {value!r}; valid: {', '.join(valid)}.")
  return problems


def _range(lowest, lowest_included, highest, highest_included) -> str:
  low = None if lowest is None else f"{'>=' if lowest_included else '>'} {lowest}"
  high = None if highest is None else f"{'<=' if highest_included else '<'} {highest}"
  return " and ".join(bound for bound in (low, high) if bound)


def range_problems(config: ml_collections.ConfigDict) -> list[str]:
  """`RANGES` and the numeric fields' types: one problem naming each field out of its range."""
  problems = []
  for field, bounds in RANGES.items():
    value, (lowest, lowest_included, highest, highest_included) = _value(config, field), bounds
    if value is _ABSENT or value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      problems.append(f"{field}={value!r} must be a number.")
      continue
    below = lowest is not None and (value < lowest if lowest_included else value <= lowest)
    above = highest is not None and (value > highest if highest_included else value >= highest)
    if below or above or value != value:  # NaN is in no range
      problems.append(f"{field}={value} must be {_range(*bounds)}.")
  return problems + _sequence_problems(config) + _choice_problems(config)


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
  if config.get("model", {}).get("name") == "classifier" and config.get("family") != "classifier":
    found.append("model.name='classifier' is trained by config.family='classifier'.")
  return found


def block_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A config carries the blocks its family reads and no other family's (whose fields would be
  ignored)."""
  if config.family not in families.FAMILIES:
    return []  # the choices' check names it
  build = f"configs.default.get_config({config.family!r}) or default.with_family(config, ...)"
  own = families.config_blocks(config.family)
  problems = [
    f"config.family={config.family!r} reads config.{block}, which is missing ({build})."
    for block in own
    if block not in config
  ]
  for block in sorted(families.all_config_blocks() - set(own)):
    if block in config:
      readers = [name for name in families.FAMILIES if block in families.config_blocks(name)]
      problems.append(
        f"config.{block} belongs to the families {', '.join(readers)}; config.family="
        f"{config.family!r} would ignore it ({build})."
      )
  return problems


def _data_problems(data: ml_collections.ConfigDict, num_classes: int) -> list[str]:
  spec = sources.dataset_spec(data.dataset)
  if spec is None:
    return [
      f"Unknown data.dataset {data.dataset!r}; known: {', '.join(sources.DATASETS)} (tfds "
      "names may carry a /config, e.g. celeb_a_hq/256)."
    ]
  problems = []
  for field in ("train_split", "eval_split"):
    split = data.get(field, "train")
    if sources.split_name(split) not in spec.splits:
      problems.append(
        f"data.{field}={split!r}: {data.dataset} has the splits {', '.join(spec.splits)} "
        f"(its held-out split: {spec.eval_split!r})."
      )
  if spec.num_classes >= 0:  # an image_folder's classes are known once it is opened
    problems += sources.label_problems(data.dataset, spec.num_classes, num_classes)
  if 0 < spec.num_classes < num_classes:
    problems.append(
      f"model.num_classes={num_classes}, but data.dataset={data.dataset!r} has "
      f"{spec.num_classes} classes."
    )
  return problems


def init_from_problems(config: ml_collections.ConfigDict) -> list[str]:
  """training.init_from_workdir names a run of this config's model."""
  source = config.training.get("init_from_workdir")
  if not source:
    return []
  from configs import workdir as workdir_configs  # (configs imports the families)

  try:
    source_model = workdir_configs.load(source).model
  except FileNotFoundError as error:
    return [f"training.init_from_workdir: {error}"]
  if base.parameter_fields(source_model) != base.parameter_fields(config.model):
    return [
      f"training.init_from_workdir={source!r} trained another model.* than this config's: "
      "its parameters cannot start this run."
    ]
  return []


def _shared_problems(config: ml_collections.ConfigDict) -> list[str]:
  data, model, optim, training = config.data, config.model, config.optim, config.training
  problems = latent.latent_problems(config)  # a broken autoencoder workdir: that alone
  problems += init_from_problems(config)
  if latent.latent_workdir(config) and not problems:
    if config.family in ("autoencoder", "prior", "classifier", "super_res"):
      problems.append(
        f"latent.autoencoder_workdir: config.family={config.family!r} does not train in an "
        "autoencoder's latents"
      )
    if config.family in ("vdm", "ardm"):  # their decoders are distributions over 256 values
      problems.append(
        f"latent.autoencoder_workdir: config.family={config.family!r} models 8-bit pixels, not "
        "an autoencoder's continuous latents"
      )
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
  if config.sampling.get("guidance_channels", 0) > data.num_channels:
    problems.append(
      f"sampling.guidance_channels={config.sampling.guidance_channels} exceeds the data's "
      f"{data.num_channels} channels (data.num_channels)."
    )
  for field in ("context", "embedding"):
    key, width = data.get(f"{field}_key", ""), model.get(f"{field}_dim")
    if bool(key) != bool(width):
      problems.append(
        f"data.{field}_key={key!r} and model.{field}_dim={width} go together: a "
        f"{field}-conditional model needs both, an unconditional one neither."
      )
  known = sources.dataset_spec(data.dataset) is not None  # (else refused by name already)
  if data.get("path") and data.dataset not in sources.ROWS_SOURCES and known:
    problems.append(
      f"data.path={data.path!r} is the .npz of data.dataset='embeddings' (a diffusion prior's "
      f"data) or 'reflow' (a flow's pairs); data.dataset={data.dataset!r} does not read it."
    )
  for field in ("prior_workdir", "embedding_file"):
    if config.sampling.get(field) and not model.get("embedding_dim"):
      problems.append(
        f"sampling.{field} gives an embedding-conditioned decoder (model.embedding_dim) the "
        "embeddings it decodes; this model takes none."
      )
  if model.get("embedding_tokens") and not model.get("embedding_dim"):
    problems.append(
      f"model.embedding_tokens={model.embedding_tokens} projects the embedding to extra context "
      "tokens: it needs model.embedding_dim."
    )
  if model.get("dtype") == "float16":
    problems.append(
      "model.dtype='float16' would need loss scaling, which this project does not do (its range "
      "underflows small gradients); use 'bfloat16' (float32's range) or 'float32'."
    )
  return problems + _network_problems(data, model)


def _network_problems(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict):
  """The shapes the network needs of the data: the U-Net's (and the classifier's) levels and
  GroupNorm widths, DiT's patches and heads, the autoencoder's factor and GroupNorm widths."""
  problems = []
  if model.get("name") == "autoencoder_kl":
    factor = autoencoder_kl.downsampling_factor(model.block_out_channels)
    if data.image_size % factor:
      problems.append(
        f"data.image_size={data.image_size} is not divisible by the autoencoder's downsampling "
        f"factor {factor} (2^(len(model.block_out_channels) - 1))."
      )
    if any(width % model.num_groups for width in model.block_out_channels):
      problems.append(
        f"model.block_out_channels {tuple(model.block_out_channels)} are not all divisible into "
        f"model.num_groups={model.num_groups} groups."
      )
    return problems
  if model.get("name") == "dit":
    if data.image_size % model.patch_size:
      problems.append(
        f"data.image_size={data.image_size} is not divisible by model.patch_size="
        f"{model.patch_size}."
      )
    if model.dit_size not in dit.DIT_SIZES:
      return problems + [f"model.dit_size must be one of {', '.join(dit.DIT_SIZES)}."]
    _, width, heads = dit.dit_shape(model.dit_size, model.depth, model.hidden_size, model.num_heads)
    if width % heads:
      problems.append(f"DiT's width {width} is not divisible by its {heads} heads.")
    return problems
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
  return problems


_SIGMA = tuple(sampling.SIGMA_SOLVERS)
_CHURN = sampling.CHURN_SIGMA_SOLVERS
# config.sampling's sampler-specific fields: their neutral values (configs/default.py's, a test
# pins them) and the samplers that read them; a family whose sampler names another family's
# samplers also bear (the flow's "euler", "heun") declares its own readers instead, as its module's
# READ_SAMPLER_FIELDS {field: its samplers that read it}
SAMPLER_FIELDS = {
  "eta": (0.0, ("ddim",)),
  "timestep_spacing": ("default", ("ddpm", "ddim")),
  "sigma_min": (None, _SIGMA),
  "sigma_max": (None, _SIGMA),
  "rho": (7.0, _SIGMA),
  "s_churn": (0.0, _CHURN),
  "s_tmin": (0.0, _CHURN),
  "s_tmax": (float("inf"), _CHURN),
  "s_noise": (1.0, _CHURN + sampling.STOCHASTIC_SIGMA_SOLVERS),
  "predictor": ("reverse_diffusion", ("pc",)),
  "corrector": ("langevin", ("pc",)),
  "snr": (0.16, ("pc",)),
  "n_corrector": (1, ("pc", "annealed_langevin")),
  "step_lr": (2e-5, ("annealed_langevin",)),
  "ode_tolerance": (1e-5, ("ode",)),
}


def _set_sampler_fields(config: ml_collections.ConfigDict):
  """(field, value, the samplers of config.family that read it, the samplers of any family that
  do) of the sampler-specific fields set away from their neutral value."""
  own_readers = getattr(families.family_module(config.family), "READ_SAMPLER_FIELDS", None)
  for field, (neutral, readers) in SAMPLER_FIELDS.items():
    value = config.sampling.get(field, neutral)
    if value != neutral:
      yield field, value, readers if own_readers is None else own_readers.get(field, ()), readers


def unread_sampling_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The sampler-specific fields set away from their neutral value that no sampler of the family
  reads (with_family resets them when a derived config changes family)."""
  own = families.family_module(config.family).SAMPLERS
  return [
    f"sampling.{field}={value!r}: config.family={config.family!r} does not read it (its samplers: "
    f"{', '.join(own) or 'none'}; read by {', '.join(anywhere)} of other families)."
    for field, value, readers, anywhere in _set_sampler_fields(config)
    if not set(readers) & set(own)
  ]


def ignored_sampling_settings(config: ml_collections.ConfigDict) -> list[str]:
  """config.sampling's fields set away from their neutral value that the chosen sampler does not
  read, though another sampler of the family does (a derived config may carry them for its own
  sampler: reported, not refused), and guidance_rescale / guidance_channels without guidance."""
  sampling_config, ignored = config.sampling, []
  sampler = sampling_config.sampler
  own = families.family_module(config.family).SAMPLERS
  for field, value, readers, _ in _set_sampler_fields(config):
    if sampler not in readers and set(readers) & set(own):
      ignored.append(
        f"sampling.{field}={value!r} is ignored: sampling.sampler={sampler!r} does not read it "
        f"(read by {', '.join(readers)})."
      )
  for field, what in (("guidance_rescale", "rescales"), ("guidance_channels", "limits")):
    if sampling_config.get(field) and not sampling_config.guidance_scale:
      ignored.append(
        f"sampling.{field}={sampling_config[field]} is ignored: it {what} classifier-free "
        "guidance, and sampling.guidance_scale is 0."
      )
  return ignored


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises InvalidConfigError (a ValueError) listing every problem of `config`: the numeric
  ranges first, alone where any is broken (the other checks assume them). Logs a warning for each
  sampling setting the chosen sampler ignores."""
  replaced = replaced_selectors(config)
  if replaced:
    raise InvalidConfigError(" ".join(replaced))
  misplaced = block_problems(config)
  if misplaced:
    raise InvalidConfigError(_listed(misplaced))
  out_of_range = range_problems(config)
  if out_of_range:
    raise InvalidConfigError(_listed(out_of_range))
  problems = _shared_problems(config) + _mode_problems(config) + unread_sampling_problems(config)
  problems += families.family_module(config.family).validate(config)
  if problems:
    raise InvalidConfigError(_listed(problems))
  for ignored in ignored_sampling_settings(config):
    logging.warning(ignored)


def _listed(problems: list[str]) -> str:
  """One line for one problem, a list for several."""
  if len(problems) == 1:
    return f"Invalid config: {problems[0]}"
  return "Invalid config:\n  - " + "\n  - ".join(problems)
