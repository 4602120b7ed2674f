"""Few-step students of a trained model. distill.method="progressive" (Salimans & Ho 2022): a
student of its teacher's architecture and diffusion, started from the teacher run's EMA parameters
(distill.teacher_workdir: a 'gaussian' run of an ε-, x0- or v-model, converted ones too), learns
to take in one DDIM step what its teacher takes in two; every distill.steps_per_round steps the
student becomes the teacher and the steps halve, distill.rounds times, from distill.teacher_steps
to teacher_steps / 2^rounds. Each round is a stage of one run: the teacher and the round are in the
train state, so that a preempted run resumes inside its round. The math is diffusion.py's
(`distillation_pair`, `progressive_distillation_loss` on `distillation_grid`, DDIM's trailing
spacing); the student samples with the Gaussian family's DDIM (timestep_spacing="trailing",
sampling.num_steps dividing teacher_steps).

`complete` copies the teacher's model, diffusion and latent blocks into the run's config (so that
its workdir samples on its own) and sets training.init_from_workdir to the teacher's workdir.
Not built yet: distill.method="consistency" (the math is edm.py's), guided teachers distilled with
the guidance weight as an input (Meng et al. 2023), flow teachers: refused by name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from ddpm_jax import diffusion
from ddpm_jax.families import base, gaussian

METHODS = ("progressive",)  # "consistency": edm.py's math, not yet a method here
SAMPLERS = ("ddim",)
# the shared fields whose default differs here (the default config's 4 rounds of 500 steps, from
# 64 teacher steps to 4 student steps)
SHARED_DEFAULTS = {
  "sampling.timestep_spacing": "trailing",
  "sampling.num_steps": 4,
  "training.num_train_steps": 2000,
  "eval.bpd_num_batches": 0,
  "eval.num_loss_batches": 0,
}


def default_config() -> ml_collections.ConfigDict:
  """config.distill: the teacher and the rounds of progressive distillation."""
  distill = ml_collections.ConfigDict()
  distill.method = "progressive"
  distill.teacher_workdir = config_dict.placeholder(str)  # a 'gaussian' run
  distill.teacher_steps = 64  # the teacher's DDIM steps, which the first round halves
  distill.rounds = 4  # halvings: the last student takes teacher_steps / 2^rounds steps
  distill.steps_per_round = 500  # training.num_train_steps = rounds · steps_per_round
  return distill


# the config blocks this family reads, each with its defaults: its own, and the teacher's diffusion
CONFIG_BLOCKS = {"distill": default_config, "diffusion": gaussian.diffusion_config}

RANGES = dict.fromkeys(
  ["distill.teacher_steps", "distill.rounds", "distill.steps_per_round"], (1, True, None, False)
)

# the blocks a student has of its teacher (copied by `complete` where the config leaves them)
TEACHER_BLOCKS = ("model", "diffusion", "latent")


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The teacher run's config (None where distill.teacher_workdir has none)."""
  workdir = config.distill.teacher_workdir
  if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
    return None
  from configs import workdir as workdir_configs  # (configs imports the families)

  return workdir_configs.load(workdir)


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (in place) with its teacher's model, diffusion and latent blocks where it has the
  family's defaults, and training.init_from_workdir the teacher's workdir."""
  teacher = teacher_config(config)
  if config.distill.teacher_workdir:  # (a missing one: training.init_from_workdir refuses it)
    config.training.init_from_workdir = config.distill.teacher_workdir
  if teacher is None or teacher.family != "gaussian":
    return config  # validate says what is wrong
  from configs import default  # (configs imports the families)

  defaults = default.get_config("distill")
  for block in TEACHER_BLOCKS:
    if base.as_json(config[block]) == base.as_json(defaults[block]):
      config[block] = copy.deepcopy(teacher[block])
  return config


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """The teacher's own checks where its workdir exists (the jobs complete the config from it
  first; training.init_from_workdir, which `complete` sets, refuses one that does not)."""
  distill = config.distill
  if distill.method not in METHODS:
    return [
      f"distill.method={distill.method!r} is not built; built: {', '.join(METHODS)} (consistency "
      "models: their math is in ddpm_jax/edm.py, the method is not yet)."
    ]
  if not distill.teacher_workdir:
    return ["distill.teacher_workdir: set it to the teacher's workdir (a 'gaussian' run)."]
  problems = gaussian.validate(config) + teacher_problems(config)
  init_from = config.training.init_from_workdir
  # (a workdir without a config: training.init_from_workdir's own problem)
  if init_from and init_from != distill.teacher_workdir and os.path.isdir(init_from):
    problems.append("training.init_from_workdir must be distill.teacher_workdir (or unset).")
  if distill.teacher_steps % 2**distill.rounds:
    problems.append(
      f"distill.teacher_steps={distill.teacher_steps} must halve distill.rounds={distill.rounds} "
      "times (a multiple of 2^rounds)."
    )
  elif distill.teacher_steps > config.diffusion.num_timesteps:
    problems.append(
      f"distill.teacher_steps={distill.teacher_steps} exceeds the {config.diffusion.num_timesteps}"
      " timesteps."
    )
  if config.training.num_train_steps != distill.rounds * distill.steps_per_round:
    problems.append(
      f"training.num_train_steps={config.training.num_train_steps} must be distill.rounds × "
      f"distill.steps_per_round = {distill.rounds * distill.steps_per_round}."
    )
  problems += sampling_problems(config) + base.no_likelihood_problems(config)
  if config.eval.num_loss_batches:
    problems.append(
      "eval.num_loss_batches: a student's loss is against its round's teacher, which the held-out "
      "evaluation does not have: set 0 (feature-FD and FID measure students)."
    )
  if config.model.get("context_dim") or config.model.get("embedding_dim"):
    problems.append("model.context_dim / embedding_dim: distilling such teachers is not built.")
  return problems


def teacher_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A 'gaussian' teacher whose model, diffusion, latent space and image size the student has."""
  teacher = teacher_config(config)
  if teacher is None:
    return []
  if teacher.family != "gaussian":
    return [
      f"distill.teacher_workdir: its config.family={teacher.family!r}; progressive distillation "
      "takes a 'gaussian' teacher (flow and EDM teachers are not built)."
    ]
  problems = [
    f"{block}.* must be the teacher's (leave them unset: they are copied)."
    for block in TEACHER_BLOCKS
    if base.as_json(config[block]) != base.as_json(teacher[block])
  ]
  size = (config.data.image_size, config.data.num_channels)
  if size != (teacher.data.image_size, teacher.data.num_channels):
    problems.append(
      f"data.image_size, data.num_channels = {size}, but the teacher's are "
      f"{(teacher.data.image_size, teacher.data.num_channels)}."
    )
  return problems


def sampling_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The student samples by DDIM (η = 0) on the distillation grid: trailing spacing, a number of
  steps that divides distill.teacher_steps, no guidance (guided distillation is not built); the
  values the Gaussian family refuses anyway are left to it."""
  sampling_config, problems = config.sampling, []
  sampler, spacing = sampling_config.sampler, sampling_config.timestep_spacing
  if sampler in gaussian.SAMPLERS and sampler != "ddim":
    problems.append(f"sampling.sampler={sampler!r}: a distilled student samples with 'ddim'.")
  if spacing in gaussian.TIMESTEP_SPACINGS and spacing != "trailing":
    problems.append(
      f"sampling.timestep_spacing={spacing!r}: a distilled student's grid is 'trailing'."
    )
  steps = sampling_config.num_steps
  if steps is None or (steps > 0 and config.distill.teacher_steps % steps):
    problems.append(
      f"sampling.num_steps={steps} must divide distill.teacher_steps="
      f"{config.distill.teacher_steps} (the student's grid is part of its teacher's)."
    )
  for field in ("eta", "guidance_scale"):
    if 0 < sampling_config[field] < math.inf:
      problems.append(f"sampling.{field}: a distilled student samples without it (0).")
  return problems


def build(config: ml_collections.ConfigDict) -> base.Family:
  student = gaussian.build(config)  # the teacher's network and diffusion, its DDIM sampler
  d, model, distill = gaussian.make_diffusion(config), student.model, config.distill
  grid = jnp.asarray(diffusion.distillation_grid(d.num_timesteps, distill.teacher_steps))

  def x0_fn(params, labels, **kwargs):
    """The network's x̂0 at (z, k): its mean parameterisation through `predict_x0`."""

    def x0(z, k):
      output = model.apply(
        params, z, gaussian.network_time_of(config.diffusion, k), labels, **kwargs
      )
      return diffusion.predict_x0(d, diffusion.split_model_output(d, output, z)[0], z, k)

    return x0

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    """Round r's student step: j = 2^(r+1) i, i uniform in 1 … N_r = teacher_steps / 2^(r+1); its
    teacher's two steps j -> j - 2^r -> j - 2^(r+1) give the target."""
    x0 = batch["image"]
    stride = 2 ** family_state["round"]  # the teacher's step, in points of the finest grid
    steps = distill.teacher_steps // (2 * stride)
    j = 2 * stride * jax.random.randint(keys.t, (x0.shape[0],), 1, steps + 1)
    labels = batch["label"] if model.num_classes else None
    noise = jax.random.normal(keys.noise, x0.shape, x0.dtype)
    k_t = grid[j]
    teacher = x0_fn(family_state["teacher"], labels, train=False)
    z_t, target = diffusion.distillation_pair(
      d, teacher, x0, noise, k_t, grid[j - stride], grid[j - 2 * stride]
    )
    return {
      "z_t": z_t,
      "target": target,
      "k_t": k_t,
      "labels": labels,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": (k_t + 1) / d.num_timesteps,
    }

  def loss(params, batch, draws, dropout_rng):
    del batch  # (in the draws: z_t and the target)
    student_x0 = x0_fn(params, draws["labels"], **base.apply_kwargs(dropout_rng))
    return diffusion.progressive_distillation_loss(
      d, student_x0, draws["z_t"], draws["target"], draws["k_t"]
    )

  def advance(state):
    """At the end of a round but the last: the student becomes the teacher, its EMA restarts."""
    family_state = state.family_state
    ends = (state.step % distill.steps_per_round == 0) & (
      family_state["round"] < distill.rounds - 1
    )
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ends, a, b), new, old)
    return state.replace(
      ema_params=pick(state.params, state.ema_params),
      family_state={
        "teacher": pick(state.params, family_state["teacher"]),
        "round": family_state["round"] + ends.astype(jnp.int32),
      },
    )

  return dataclasses.replace(
    student,
    draw=draw,
    loss=loss,
    bits_per_dim=None,
    init_state=lambda params: {"teacher": params, "round": jnp.zeros((), jnp.int32)},
    update_state=lambda family_state, draws, per_example: family_state,
    advance=advance,
  )
