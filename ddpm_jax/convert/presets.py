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
from ddpm_jax.convert.diffusers import from_diffusers
from ddpm_jax.convert.guided_diffusion import (
  SUPER_RES_CHANNEL_MULT,
  from_guided_diffusion,
  from_guided_diffusion_classifier,
  from_guided_diffusion_super_res,
  guided_diffusion_classifier_config,
  guided_diffusion_model_config,
)
from ddpm_jax.convert.torch_layout import Params
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


# guided-diffusion's diffusion flags (the rest are create_model's)
_DIFFUSION_FLAGS = (
  "diffusion_steps",
  "noise_schedule",
  "timestep_respacing",
  "use_kl",
  "predict_xstart",
  "rescale_timesteps",
  "rescale_learned_sigmas",
)


def parse_model_flags(text: str) -> dict[str, Any]:
  """guided-diffusion's MODEL_FLAGS ("--image_size 64 --class_cond True …") -> a dict of values."""
  words, flags = text.split(), {}
  if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
    raise ValueError(f"MODEL_FLAGS must be '--name value' pairs; got {text!r}.")
  for name, value in zip(words[::2], words[1::2]):
    if value in ("True", "False"):
      flags[name[2:]] = value == "True"
    else:
      try:
        flags[name[2:]] = int(value)
      except ValueError:
        flags[name[2:]] = float(value) if value.replace(".", "", 1).isdigit() else value
  return flags


def guided_diffusion_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config (configs/default.py's) for guided-diffusion's flags: its U-Net, its diffusion
  (schedule, T, ε-prediction, learned range or fixed large variance, hybrid loss), ancestral
  sampling on 250 respaced steps as its README samples."""

  flags = dict(flags)
  diffusion_flags = {k: flags.pop(k) for k in _DIFFUSION_FLAGS if k in flags}
  if diffusion_flags.get("predict_xstart") or diffusion_flags.get("use_kl"):
    raise ValueError("predict_xstart / use_kl checkpoints are not supported by the presets yet.")
  config = default.get_config()
  config.family = "gaussian"
  config.model.update(guided_diffusion_model_config(**flags))
  set_dataset(config, dataset)
  config.data.image_size, config.data.num_channels = flags["image_size"], 3
  config.data.resize = "adm"
  learned = flags.get("learn_sigma", False)
  config.diffusion.update(
    beta_schedule=diffusion_flags.get("noise_schedule", "linear"),
    num_timesteps=diffusion_flags.get("diffusion_steps", 1000),
    mean_type="eps",
    var_type="learned_range" if learned else "fixed_large",
    loss_type="hybrid" if learned else "mse",
  )
  config.training.label_dropout = 0.0
  config.sampling.sampler, config.sampling.num_steps = "ddpm", 250
  return config


def guided_diffusion_super_res_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config of config.family="super_res" for guided-diffusion's upsampler flags (large_size,
  small_size and the rest as `guided_diffusion_config`): ancestral sampling on 250 steps of the
  low-res images in super_res.low_res_file (its super_res_sample.py's --base_samples) or of a
  base model's workdir (super_res.low_res_workdir)."""
  flags = dict(flags)
  large_size, small_size = flags.pop("large_size"), flags.pop("small_size")
  flags.setdefault("channel_mult", SUPER_RES_CHANNEL_MULT.get(large_size, ""))
  config = guided_diffusion_config({**flags, "image_size": large_size}, dataset)
  config.family = "super_res"
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


def diffusers_config(model_dir: str, dataset: str = "image_folder"):
  """(run config, params) of a diffusers model directory: a UNet2DModel's (config.json + weights),
  or a DDPMPipeline's (unet/ and scheduler/scheduler_config.json, whose schedule, T, prediction
  and variance type the config takes; ancestral sampling as DDPMPipeline's)."""

  unet_dir = os.path.join(model_dir, "unet")
  unet_dir = unet_dir if os.path.isdir(unet_dir) else model_dir
  model_config, params = from_diffusers(unet_dir)
  config = default.get_config()
  config.family = "gaussian"
  config.model.update(model_config)
  with open(os.path.join(unet_dir, "config.json")) as f:
    unet_config = json.load(f)
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
  config.diffusion.update(
    beta_schedule=_DIFFUSERS_SCHEDULES[schedule],
    num_timesteps=scheduler.get("num_train_timesteps", 1000),
    mean_type=_DIFFUSERS_PREDICTIONS[scheduler.get("prediction_type", "epsilon")],
    var_type=var_type,
    loss_type="hybrid" if var_type == "learned_range" else "mse",
  )
  config.sampling.sampler, config.sampling.num_steps = "ddpm", None
  config.sampling.clip_denoised = bool(scheduler.get("clip_sample", True))
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
  """A run config of config.family="classifier" for create_classifier's flags, on the noise
  process of the diffusion model it guides (T = 1000, `noise_schedule`), so that
  sampling.classifier_workdir can point at its workdir."""

  flags = dict(flags)
  schedule = flags.pop("noise_schedule", noise_schedule)
  steps = flags.pop("diffusion_steps", 1000)
  config = default.get_config()
  config.family = "classifier"
  config.model = guided_diffusion_classifier_config(**flags)
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
}


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
  create_kwargs = {k: v for k, v in flags.items() if k not in _DIFFUSION_FLAGS}
  return config, from_guided_diffusion(checkpoint, **create_kwargs)[1]


def guided_diffusion_classifier_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a guided-diffusion noisy classifier checkpoint."""
  del dataset  # the classifiers are ImageNet's
  text = _model_flags(CLASSIFIER_PRESETS, preset, model_flags, lambda p: p[0])
  schedule = CLASSIFIER_PRESETS[preset][1] if preset else "linear"
  flags = parse_model_flags(text)
  config = guided_diffusion_classifier_run_config(flags, schedule)
  create_kwargs = {
    k: v for k, v in flags.items() if k.startswith("classifier_") or k == "image_size"
  }
  return config, from_guided_diffusion_classifier(checkpoint, **create_kwargs)[1]


def guided_diffusion_super_res_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a guided-diffusion upsampler (SuperResModel) checkpoint."""
  flags = parse_model_flags(_model_flags(SUPER_RES_PRESETS, preset, model_flags))
  config = guided_diffusion_super_res_config(
    flags, dataset or ("imagenet2012" if preset else "image_folder")
  )
  create_kwargs = {k: v for k, v in flags.items() if k not in _DIFFUSION_FLAGS}
  return config, from_guided_diffusion_super_res(checkpoint, **create_kwargs)[1]


def diffusers_run(checkpoint: str, preset=None, model_flags=None, dataset=None):
  """(run config, params) of a diffusers UNet2DModel or DDPMPipeline directory."""
  if model_flags:
    raise ValueError("--source=diffusers reads the model from its config.json: no --model_flags.")
  return diffusers_config(checkpoint, dataset or DIFFUSERS_PRESETS.get(preset, "image_folder"))
