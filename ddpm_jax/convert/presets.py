"""Run configs for converted checkpoints (the released models' flags as presets, the sources'
diffusion settings) and the workdir a conversion writes, which `--mode=sample` / `--mode=eval` and
`ddpm_jax.load` run on."""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from configs import default
from ddpm_jax.convert import dit, fit, guided_diffusion
from ddpm_jax.convert.fit import (
  from_diffusers,
  from_guided_diffusion,
  from_guided_diffusion_classifier,
  from_guided_diffusion_super_res,
)
from ddpm_jax.convert.guided_diffusion import (
  SUPER_RES_CHANNEL_MULT,
  guided_diffusion_classifier_config,
  guided_diffusion_model_config,
)
from ddpm_jax.convert.torch_layout import Params, shape_mismatches
from ddpm_jax.data import sources
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs.train_state import create_train_state
from ddpm_jax.runtime import checkpoint as checkpoint_lib
from ddpm_jax.runtime import parallel

# The released models' flags, from the references' READMEs (so that nobody retypes them):
# name -> (source, MODEL_FLAGS, config.data.dataset).
_ADM_256 = (
  "--attention_resolutions 32,16,8 --diffusion_steps 1000 --image_size 256 --learn_sigma True "
  "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
  "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)


PRESETS = {
  "adm_imagenet64": (
    "guided_diffusion",
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
    "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "imagenet2012",
  ),
  "adm_imagenet128": (
    "guided_diffusion",
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "imagenet2012",
  ),
  "adm_imagenet256": ("guided_diffusion", _ADM_256 + " --class_cond True", "imagenet2012"),
  "adm_imagenet256_uncond": ("guided_diffusion", _ADM_256 + " --class_cond False", "imagenet2012"),
  "adm_imagenet512": (
    "guided_diffusion",
    _ADM_256.replace("--image_size 256", "--image_size 512").replace(
      "True --use_scale", "False --use_scale"
    )
    + " --class_cond True",
    "imagenet2012",
  ),
  "adm_lsun_bedroom": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/bedroom"),
  "adm_lsun_cat": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/cat"),
  "adm_lsun_horse": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/horse"),
  "adm_lsun_horse_nodropout": ("guided_diffusion", _ADM_256 + " --dropout 0.0", "lsun/horse"),
}


# improved-diffusion's released models (its README's "Models and Hyperparameters": MODEL_FLAGS and
# DIFFUSION_FLAGS), name -> (flags, config.data.dataset)
_IMPROVED_IMAGENET64 = "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
_IMPROVED_CIFAR10 = (
  "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
)
_IMPROVED_LSUN = (
  "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True "
  "--use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 "
  "--noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"
)
IMPROVED_PRESETS = {
  "iddpm_imagenet64": (
    _IMPROVED_IMAGENET64 + "--diffusion_steps 4000 --noise_schedule cosine",
    "imagenet2012",
  ),
  "iddpm_cifar10": (
    _IMPROVED_CIFAR10 + "--diffusion_steps 4000 --noise_schedule cosine",
    "cifar10",
  ),
  "iddpm_imagenet64_cond": (
    "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True "
    "--diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False "
    "--rescale_timesteps False",
    "imagenet2012",
  ),
  "iddpm_lsun_bedroom": (_IMPROVED_LSUN, "lsun/bedroom"),
  "iddpm_imagenet64_vlb": (
    _IMPROVED_IMAGENET64 + "--diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    "imagenet2012",
  ),
  "iddpm_cifar10_vlb": (
    _IMPROVED_CIFAR10 + "--diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    "cifar10",
  ),
}


# guided-diffusion's upsamplers (its README's "Upsampling"); with guidance and the base models they
# reach FID 3.94 (ImageNet 256×256) and 3.85 (512×512), its README's table
SUPER_RES_PRESETS = {
  "adm_imagenet64_256_upsampler": (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
    "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
  ),
  "adm_imagenet128_512_upsampler": (
    "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 "
    "--small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
    "--use_scale_shift_norm True"
  ),
}


def _str2bool(value: str) -> bool:
  """guided-diffusion's script_util.str2bool."""
  if value.lower() in ("yes", "true", "t", "y", "1"):
    return True
  if value.lower() in ("no", "false", "f", "n", "0"):
    return False
  raise ValueError(f"{value!r} is not a boolean")


def parse_model_flags(
  text: str, defaults: dict[str, Any] = guided_diffusion.MODEL_AND_DIFFUSION_DEFAULTS
) -> dict[str, Any]:
  """MODEL_FLAGS ("--image_size 64 --class_cond True …", or --name=value) read as the source's
  scripts read them: its `defaults` dict updated by the flags, each value parsed as its default's
  type (booleans as str2bool; lists such as attention_resolutions stay strings). An unknown flag or
  a value that does not parse is a ValueError of one line naming it."""
  words = []
  for word in text.split():
    words += word.split("=", 1) if word.startswith("--") and "=" in word else [word]
  if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
    raise ValueError(f"MODEL_FLAGS must be '--name value' pairs; got {text!r}.")
  flags = dict(defaults)
  for name, value in zip((w[2:] for w in words[::2]), words[1::2]):
    if name not in defaults:
      raise ValueError(f"Unknown flag --{name}; the source's flags: {', '.join(defaults)}.")
    kind = type(defaults[name])
    try:
      flags[name] = _str2bool(value) if kind is bool else kind(value)
    except ValueError:
      raise ValueError(f"--{name} {value}: expected a {kind.__name__}.") from None
  return flags


def create_model_kwargs(flags: dict[str, Any]) -> dict[str, Any]:
  """The arguments of guided-diffusion's create_model among `flags`."""
  names = {
    *guided_diffusion.GUIDED_DIFFUSION_DEFAULTS,
    "image_size",
    "num_channels",
    "num_res_blocks",
  }
  return {k: v for k, v in flags.items() if k in names}


def diffusion_settings(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(config.diffusion, config.sampling) of the scripts' diffusion flags, as their
  create_gaussian_diffusion reads them: ε- or x0-prediction; Σ learned in range, fixed small
  (sigma_small) or large; the loss T·L_t (use_kl), else L_simple plus, with a learned Σ, L_t
  (rescale_learned_sigmas: T/1000·L_t, 'hybrid'); the network's t scaled to [0, 1000)
  (rescale_timesteps); timestep_respacing as the default sampler ("ddimN": DDIM on N steps, "N":
  ancestral on N; unset: ancestral on 250, as the READMEs sample)."""
  steps, learned = flags["diffusion_steps"], flags["learn_sigma"]
  if flags["use_kl"]:
    loss_type = "rescaled_kl"
  else:
    loss_type = "hybrid" if learned and flags["rescale_learned_sigmas"] else "mse"
  variance = "fixed_small" if flags.get("sigma_small") else "fixed_large"
  diffusion_config = dict(
    beta_schedule=flags["noise_schedule"],
    num_timesteps=steps,
    mean_type="x0" if flags["predict_xstart"] else "eps",
    var_type="learned_range" if learned else variance,
    loss_type=loss_type,
    rescale_timesteps=flags["rescale_timesteps"],
  )
  respacing = flags["timestep_respacing"]
  if not respacing:
    sampling_config = dict(sampler="ddpm", num_steps=min(250, steps))
  elif respacing.startswith("ddim") and respacing[4:].isdigit():
    sampling_config = dict(sampler="ddim", num_steps=int(respacing[4:]))
  elif respacing.isdigit():
    sampling_config = dict(sampler="ddpm", num_steps=int(respacing))
  else:
    raise ValueError(
      f"--timestep_respacing {respacing}: sections of several counts have no sampler here; give "
      "one count N (ancestral) or ddimN."
    )
  return diffusion_config, sampling_config


def guided_diffusion_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config (configs/default.py's) for guided-diffusion's flags (`parse_model_flags`'
  dict; the ones it lacks take model_and_diffusion_defaults()'s values): its U-Net, its diffusion
  and its sampler (`diffusion_settings`)."""
  flags = {**guided_diffusion.MODEL_AND_DIFFUSION_DEFAULTS, **flags}
  config = default.get_config("gaussian")
  config.model.update(guided_diffusion_model_config(**create_model_kwargs(flags)))
  set_dataset(config, dataset)
  config.data.image_size, config.data.num_channels = flags["image_size"], 3
  config.data.resize = "adm"
  diffusion_config, sampling_config = diffusion_settings(flags)
  config.diffusion.update(diffusion_config)
  config.sampling.update(sampling_config)
  config.training.label_dropout = 0.0
  return config


def improved_diffusion_flags(flags: dict[str, Any]) -> dict[str, Any]:
  """improved-diffusion's flags (onto its defaults) -> the same network's and diffusion's
  guided-diffusion flags: its create_model's channel_mult by image size, one attention order (the
  legacy one), no head width or BigGAN up/down-sampling."""
  flags = {**guided_diffusion.IMPROVED_DIFFUSION_DEFAULTS, **flags}
  size = flags["image_size"]
  if size not in guided_diffusion.IMPROVED_DIFFUSION_CHANNEL_MULT:
    raise ValueError(
      f"improved-diffusion's create_model has no network for image_size={size} (it builds "
      f"{', '.join(map(str, guided_diffusion.IMPROVED_DIFFUSION_CHANNEL_MULT))})."
    )
  return {**flags, "channel_mult": guided_diffusion.IMPROVED_DIFFUSION_CHANNEL_MULT[size]}


def improved_diffusion_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config for improved-diffusion's flags (onto its model_and_diffusion_defaults(): t
  rescaled, T/1000·L_t with a learned Σ), as `guided_diffusion_config`."""
  return guided_diffusion_config(improved_diffusion_flags(flags), dataset)


def guided_diffusion_super_res_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config of config.family="super_res" for guided-diffusion's upsampler flags (onto
  sr_model_and_diffusion_defaults(); large_size, small_size and the rest as
  `guided_diffusion_config`): ancestral sampling on 250 steps of the low-res images in
  super_res.low_res_file (its super_res_sample.py's --base_samples) or of a base model's workdir
  (super_res.low_res_workdir)."""
  flags = {**guided_diffusion.SR_MODEL_AND_DIFFUSION_DEFAULTS, **flags}
  large_size, small_size = flags.pop("large_size"), flags.pop("small_size")
  flags.setdefault("channel_mult", SUPER_RES_CHANNEL_MULT.get(large_size, ""))
  config = guided_diffusion_config({**flags, "image_size": large_size}, dataset)
  default.with_family(config, "super_res")
  config.super_res.low_res_size = small_size
  return config


def set_dataset(config, dataset: str) -> None:
  """config.data.dataset with the splits `sources.DATASETS` gives it (CelebA-HQ: slices)."""

  config.data.dataset = dataset
  spec = sources.dataset_spec(dataset)
  if spec is not None:
    config.data.train_split, config.data.eval_split = spec.train_split, spec.eval_split


def write_workdir(config, params: Params, workdir: str, source: str, checkpoint: str) -> None:
  """A workdir that --mode=sample / --mode=eval and `ddpm_jax.load` run on: config.json and a
  step-0 checkpoint whose params and EMA params are both the checkpoint's weights (the released
  checkpoints are the EMA ones)."""

  config.convert = ml_collections.ConfigDict(
    dict(
      source=source,
      checkpoint=checkpoint,
      weights="params and ema_params are both the checkpoint's weights (its EMA parameters)",
    )
  )
  validate_config(config)
  mesh = parallel.make_mesh()
  state = create_train_state(config, jax.random.key(0), mesh)
  differing = shape_mismatches(params, state.params)
  if differing:
    raise ValueError(
      f"The params do not fit config.model: {len(differing)} entries differ, e.g. "
      + "; ".join(f"{k}: {given} vs {wanted}" for k, given, wanted in differing[:3])
    )
  place = lambda tree: jax.tree_util.tree_map(
    lambda a, ref: jax.device_put(np.asarray(a, ref.dtype), ref.sharding), tree, state.params
  )
  state = state.replace(params=place(params), ema_params=place(params))
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpoint_lib.Checkpointer(workdir)
  ckpt.save(0, state, config)
  ckpt.close()


# diffusers' DDPMScheduler config -> config.diffusion
_DIFFUSERS_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}


_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


_DIFFUSERS_VARIANCES = {
  "fixed_small": "fixed_small",
  "fixed_large": "fixed_large",
  "learned_range": "learned_range",
}


def latent_pipeline_vae(model_dir: str) -> str | None:
  """The vae/ of a latent-diffusion pipeline directory (DiTPipeline's); None for other models."""
  vae = os.path.join(model_dir, "vae")
  return vae if os.path.isdir(vae) else None


def diffusers_config(
  model_dir: str, dataset: str = "image_folder", autoencoder_workdir: str | None = None
):
  """(run config, params) of a diffusers model directory: a UNet2DModel's or a pixel-space
  DiTTransformer2DModel's (config.json + weights), an AutoencoderKL's (an autoencoder workdir, for
  config.latent.autoencoder_workdir), or a DDPMPipeline's or DiT pipeline's (unet/ or
  transformer/ and scheduler/scheduler_config.json, whose schedule, T, prediction and variance
  type the config takes; a DiT of 2C outputs has ADM's learned range; ancestral sampling as
  DDPMPipeline's). A latent pipeline's (vae/) denoiser runs in the latents of
  `autoencoder_workdir`, its vae/ converted (the command line writes both)."""
  if latent_pipeline_vae(model_dir) and not autoencoder_workdir:
    raise ValueError(
      f"{model_dir} is a latent-diffusion pipeline (vae/): convert its vae/ into an autoencoder "
      "workdir first and pass it as autoencoder_workdir (python -m ddpm_jax.convert "
      "--source=diffusers converts both in one step)."
    )
  unet_dir = fit.diffusers_model_dir(model_dir)
  model_config, params = from_diffusers(unet_dir)
  with open(os.path.join(unet_dir, "config.json")) as f:
    unet_config = json.load(f)
  if model_config.name == "autoencoder_kl":  # a VAE: a workdir for config.latent
    config = default.get_config("autoencoder")
    config.model = model_config
    set_dataset(config, dataset)
    config.data.image_size = unet_config.get("sample_size", 256)
    config.data.num_channels = unet_config.get("in_channels", 3)
    return config, params
  config = default.get_config("gaussian")
  if model_config.name == "dit":
    config.model = model_config
  else:
    config.model.update(model_config)
  set_dataset(config, dataset)
  config.data.image_size = unet_config["sample_size"]
  config.data.num_channels = unet_config["in_channels"]
  scheduler_path = os.path.join(model_dir, "scheduler", "scheduler_config.json")
  scheduler = {}
  if os.path.exists(scheduler_path):
    with open(scheduler_path) as f:
      scheduler = json.load(f)
  schedule = scheduler.get("beta_schedule", "linear")
  problems = []
  if schedule not in _DIFFUSERS_SCHEDULES:
    problems.append(f"beta_schedule={schedule!r}")
  if schedule == "linear" and (
    scheduler.get("beta_start", 1e-4),
    scheduler.get("beta_end", 0.02),
  ) != (
    1e-4,
    0.02,
  ):
    problems.append(f"a linear schedule from {scheduler['beta_start']} to {scheduler['beta_end']}")
  for field, table, default_value in (
    ("prediction_type", _DIFFUSERS_PREDICTIONS, "epsilon"),
    ("variance_type", _DIFFUSERS_VARIANCES, "fixed_small"),
  ):
    if scheduler.get(field, default_value) not in table:
      problems.append(f"{field}={scheduler[field]!r}")
  if problems:
    raise ValueError(f"{scheduler_path}: not supported: {'; '.join(problems)}.")
  var_type = _DIFFUSERS_VARIANCES[scheduler.get("variance_type", "fixed_small")]
  if config.model.out_channels == 2 * config.data.num_channels:  # DiT's learned Σ (its schedulers
    var_type = "learned_range"  # are DDIM / DPM-Solver, which have no variance_type)
  config.diffusion.update(
    beta_schedule=_DIFFUSERS_SCHEDULES[schedule],
    num_timesteps=scheduler.get("num_train_timesteps", 1000),
    mean_type=_DIFFUSERS_PREDICTIONS[scheduler.get("prediction_type", "epsilon")],
    var_type=var_type,
    loss_type="hybrid" if var_type == "learned_range" else "mse",
  )
  config.sampling.sampler, config.sampling.num_steps = "ddpm", None
  config.sampling.clip_denoised = bool(scheduler.get("clip_sample", True))
  if autoencoder_workdir:  # the denoiser's samples are latents, decoded into images
    config.latent.autoencoder_workdir = autoencoder_workdir
    config.sampling.clip_denoised = False
  return config, params


# guided-diffusion's released noisy classifiers: name -> (CLASSIFIER_FLAGS, the diffusion's
# noise_schedule); the rest are create_classifier's defaults, as its README's commands
CLASSIFIER_PRESETS = {
  "adm_imagenet64_classifier": ("--image_size 64 --classifier_depth 4", "cosine"),
  "adm_imagenet128_classifier": ("--image_size 128", "linear"),
  "adm_imagenet256_classifier": ("--image_size 256", "linear"),
  "adm_imagenet512_classifier": ("--image_size 512", "linear"),
}


def guided_diffusion_classifier_run_config(flags: dict[str, Any], noise_schedule: str):
  """A run config of config.family="classifier" for classifier_train.py's flags (onto
  classifier_and_diffusion_defaults(), `noise_schedule` where they do not set it), on the noise
  process of the diffusion model it guides, so that sampling.classifier_workdir can point at its
  workdir. (classifier_train.py gives the classifier t unscaled whatever rescale_timesteps says.)"""

  defaults = guided_diffusion.CLASSIFIER_AND_DIFFUSION_DEFAULTS
  flags = {**defaults, "noise_schedule": noise_schedule, **flags}
  schedule, steps = flags["noise_schedule"], flags["diffusion_steps"]
  config = default.get_config("classifier")
  classifier_flags = {k: v for k, v in flags.items() if k.startswith("classifier_")}
  config.model = guided_diffusion_classifier_config(flags["image_size"], **classifier_flags)
  set_dataset(config, "imagenet2012")
  config.data.image_size, config.data.num_channels, config.data.resize = (
    flags["image_size"],
    3,
    "adm",
  )
  config.diffusion.update(beta_schedule=schedule, num_timesteps=steps)
  config.sampling.num_samples, config.eval.bpd_num_batches = 0, 0
  return config


# diffusers' released DDPM pipelines -> config.data.dataset (the model flags are in config.json)
DIFFUSERS_PRESETS = {
  "ddpm_cifar10": "cifar10",  # google/ddpm-cifar10-32
  "ddpm_celebahq256": "celeb_a_hq/256",  # google/ddpm-celebahq-256
  "ddpm_lsun_church256": "lsun/church_outdoor",  # google/ddpm-church-256
  "ddpm_lsun_bedroom256": "lsun/bedroom",  # google/ddpm-bedroom-256
  "sd_vae_ft_mse": "image_folder",  # stabilityai/sd-vae-ft-mse, the autoencoders below
  "sd_vae_ft_ema": "image_folder",  # stabilityai/sd-vae-ft-ema
  "sdxl_vae": "image_folder",  # stabilityai/sdxl-vae (SDXL's base vae/)
}

# The released KL autoencoders by name: what their config.json must give (f = 8, 4 latent channels)
# and the scale of their latents (the SD-VAE's config.json predates the field: diffusers' default)
_SD_VAE = dict(block_out_channels=(128, 256, 512, 512), num_res_blocks=2, latent_channels=4)
AUTOENCODER_PRESETS = {
  "sd_vae_ft_mse": dict(_SD_VAE, scaling_factor=0.18215),
  "sd_vae_ft_ema": dict(_SD_VAE, scaling_factor=0.18215),
  "sdxl_vae": dict(_SD_VAE, scaling_factor=0.13025),
}


def check_autoencoder_preset(preset: str, model_config: ml_collections.ConfigDict) -> None:
  """Raises where a converted autoencoder is not the released one `preset` names."""
  differing = [
    f"{field}={model_config[field]!r} (the preset's: {wanted!r})"
    for field, wanted in AUTOENCODER_PRESETS[preset].items()
    if model_config.get(field) != wanted
  ]
  if differing:
    raise ValueError(f"This autoencoder is not --preset={preset}: {'; '.join(differing)}.")


def _model_flags(presets: dict, preset: str | None, model_flags: str | None, pick=lambda p: p):
  """The MODEL_FLAGS text of `preset` (through `pick` from its table entry) or `model_flags`."""
  if preset:
    return pick(presets[preset])
  if model_flags:
    return model_flags
  raise ValueError("Give --preset (one of: " + ", ".join(presets) + ") or --model_flags.")


def guided_diffusion_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a guided-diffusion UNetModel checkpoint."""
  flags = parse_model_flags(_model_flags(PRESETS, preset, model_flags, lambda p: p[1]))
  config = guided_diffusion_config(
    flags, dataset or (PRESETS[preset][2] if preset else "image_folder")
  )
  return config, from_guided_diffusion(checkpoint, **create_model_kwargs(flags))[1]


def improved_diffusion_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of an improved-diffusion UNetModel checkpoint (its MODEL_FLAGS and
  DIFFUSION_FLAGS together)."""
  text = _model_flags(IMPROVED_PRESETS, preset, model_flags, lambda p: p[0])
  flags = improved_diffusion_flags(
    parse_model_flags(text, guided_diffusion.IMPROVED_DIFFUSION_DEFAULTS)
  )
  config = guided_diffusion_config(
    flags, dataset or (IMPROVED_PRESETS[preset][1] if preset else "image_folder")
  )
  return config, from_guided_diffusion(checkpoint, **create_model_kwargs(flags))[1]


def guided_diffusion_classifier_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a guided-diffusion noisy classifier checkpoint."""
  del dataset  # the classifiers are ImageNet's
  text = _model_flags(CLASSIFIER_PRESETS, preset, model_flags, lambda p: p[0])
  if preset:
    text += f" --noise_schedule {CLASSIFIER_PRESETS[preset][1]}"
  flags = parse_model_flags(text, guided_diffusion.CLASSIFIER_AND_DIFFUSION_DEFAULTS)
  config = guided_diffusion_classifier_run_config(flags, flags["noise_schedule"])
  create_kwargs = {
    k: v for k, v in flags.items() if k.startswith("classifier_") or k == "image_size"
  }
  return config, from_guided_diffusion_classifier(checkpoint, **create_kwargs)[1]


def guided_diffusion_super_res_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a guided-diffusion upsampler (SuperResModel) checkpoint."""
  text = _model_flags(SUPER_RES_PRESETS, preset, model_flags)
  flags = parse_model_flags(text, guided_diffusion.SR_MODEL_AND_DIFFUSION_DEFAULTS)
  config = guided_diffusion_super_res_config(
    flags, dataset or ("imagenet2012" if preset else "image_folder")
  )
  create_kwargs = {k: v for k, v in flags.items() if k not in guided_diffusion.DIFFUSION_DEFAULTS}
  learn_sigma = {"learn_sigma": flags["learn_sigma"]}
  return config, from_guided_diffusion_super_res(checkpoint, **create_kwargs, **learn_sigma)[1]


# facebookresearch/DiT's released EMA checkpoints (DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt): the
# image size of each
DIT_PRESETS = {"DiT-XL/2-256": 256, "DiT-XL/2-512": 512}


def dit_run(checkpoint: str, preset=None, model_flags=None, dataset=None, autoencoder_workdir=None):
  """(run config, params) of a facebookresearch/DiT checkpoint on the latents of
  `autoencoder_workdir`, the SD-VAE converted by --source=diffusers (stabilityai/sd-vae-ft-ema or
  -mse): configs/dit_xl2_imagenet256.py's diffusion (linear, T = 1000, learned Σ) and sampling
  (250 DDPM steps, guidance w = 0.5 on the first 3 latent channels as DiT's sample.py guides, the
  paper's FID setting) at the checkpoint's latent size. Without the
  autoencoder's workdir the network is read and checked, and refused."""
  if model_flags:
    raise ValueError("--source=dit reads the sizes from the weights: no --model_flags.")
  weights = dit.dit_weights(checkpoint)
  model_config, params = fit.fitted(weights)
  size = DIT_PRESETS.get(preset)
  if not autoencoder_workdir:
    raise ValueError(
      f"{checkpoint} is a DiT of {model_config.depth} blocks of width {model_config.hidden_size} "
      f"(read and checked){f' for {size}² images' if size else ''}: facebookresearch/DiT's "
      "models denoise the SD-VAE's latents (32×32×4 at 256², 64×64×4 at 512²). Convert that VAE "
      "(python -m ddpm_jax.convert --source=diffusers --checkpoint=sd-vae-ft-ema/ "
      "--workdir=VAE_DIR) and pass --autoencoder_workdir=VAE_DIR."
    )
  from configs import dit_xl2_imagenet256

  config = dit_xl2_imagenet256.get_config()
  config.model = model_config
  set_dataset(config, dataset or "imagenet2012")
  latent_size, _, config.data.num_channels = weights.input_shape
  config.data.image_size = latent_size
  config.latent.autoencoder_workdir = autoencoder_workdir
  return config, params


def diffusers_run(
  checkpoint: str, preset=None, model_flags=None, dataset=None, autoencoder_workdir=None
):
  """(run config, params) of a diffusers UNet2DModel, DDPMPipeline, DiT pipeline (a latent one's
  in the latents of `autoencoder_workdir`) or AutoencoderKL directory (an autoencoder preset
  checks that it is the released one it names)."""
  if model_flags:
    raise ValueError("--source=diffusers reads the model from its config.json: no --model_flags.")
  config, params = diffusers_config(
    checkpoint, dataset or DIFFUSERS_PRESETS.get(preset, "image_folder"), autoencoder_workdir
  )
  if preset and (preset in AUTOENCODER_PRESETS) != (config.model.name == "autoencoder_kl"):
    raise ValueError(f"--preset={preset} names another kind of model than {checkpoint}'s.")
  if preset in AUTOENCODER_PRESETS:
    check_autoencoder_preset(preset, config.model)
  return config, params
