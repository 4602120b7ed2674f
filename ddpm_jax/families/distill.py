"""Few-step students of a trained model (or, for consistency training, of none).

distill.method="progressive" (Salimans & Ho 2022): a student of its teacher's architecture and
diffusion, started from the teacher run's EMA parameters (distill.teacher_workdir: a 'gaussian' run
of an ε-, x0- or v-model, converted ones too), learns to take in one DDIM step what its teacher
takes in two (a 'flow' teacher's student: one Euler step of the ODE for two, by the squared error
of the velocity, `flow.euler_distillation_target`; it samples by 'euler' on the teacher's shifted
grid); every distill.steps_per_round steps the student becomes the teacher and the steps
halve, distill.rounds times, from distill.teacher_steps to teacher_steps / 2^rounds. Each round is
a stage of one run: the teacher and the round are in the train state, so that a preempted run
resumes inside its round. The math is diffusion.py's (`distillation_pair`,
`progressive_distillation_loss` on `distillation_grid`, DDIM's trailing spacing); the student
samples with the Gaussian family's DDIM (timestep_spacing="trailing", sampling.num_steps dividing
teacher_steps).

distill.method="consistency" (Song et al. 2023; iCT, Song & Dhariwal 2023): a consistency function
f_θ(x, σ) = c_skip x + (c_out/c_out^EDM)(D_θ(x, σ) - c_skip^EDM x) of a denoiser D_θ
(`edm.consistency_from_denoiser`: CM's boundary-condition parameterisation), on EDM's grid of
distill.num_scales noise levels between the denoiser's σ_min and σ_max. With a teacher
(consistency distillation): D_θ is the teacher's kind (a 'gaussian' run's through
`sampling.discrete_denoiser`, an 'edm' run's preconditioned network), θ starts from the teacher,
x̂_{σ_i} is one Heun step of the teacher's ODE from x_{σ_{i+1}}, i uniform, against the target
network θ⁻ (an EMA of θ at distill.target_ema, in the train state). Without one (consistency
training, iCT): EDM's preconditioned network from scratch, x_{σ_i} = x + σ_i z beside
x_{σ_{i+1}} = x + σ_{i+1} z, θ⁻ = θ under stop-gradient, iCT's curriculum (distill.initial_scales
doubling to num_scales over the run) and log-normal index distribution. Both weigh the distance
(distill.distance: iCT's pseudo-Huber, or squared L2) by 1/(σ_{i+1} - σ_i). Sampling
(sampling.sampler="consistency"): CM's multistep sampler on sampling.num_steps levels of EDM's grid
from σ_max (1: one step).

`complete` copies the teacher's model, diffusion / edm and latent blocks into the run's config (so
that its workdir samples on its own) and sets training.init_from_workdir to the teacher's workdir.
Not built: guided teachers distilled with the guidance weight as an input (Meng et al. 2023),
consistency models of flow teachers, LPIPS distances (no perceptual network here): refused by name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np

from ddpm_jax import diffusion, edm, flow, losses, models, sampling
from ddpm_jax.families import base, gaussian, latent
from ddpm_jax.families import edm as edm_family
from ddpm_jax.families import flow as flow_family

METHODS = ("progressive", "consistency")
# progressive students: DDIM (a flow's: Euler); consistency models: CM's sampler
SAMPLERS = ("ddim", "euler", "consistency")
DISTANCES = ("pseudo_huber", "l2")
# the shared fields whose default differs here (the default config's 4 rounds of 500 steps, from
# 64 teacher steps to 4 student steps; students train on the true labels)
SHARED_DEFAULTS = {
  "sampling.timestep_spacing": "trailing",
  "sampling.num_steps": 4,
  "training.num_train_steps": 2000,
  "training.label_dropout": 0.0,
  "eval.bpd_num_batches": 0,
  "eval.num_loss_batches": 0,
}


def default_config() -> ml_collections.ConfigDict:
  """config.distill: the teacher, the rounds of progressive distillation, the consistency
  model's grid and target."""
  distill = ml_collections.ConfigDict()
  distill.method = "progressive"
  # a 'gaussian' or 'flow' run (progressive); a 'gaussian' or 'edm' run (consistency; None:
  # consistency training)
  distill.teacher_workdir = config_dict.placeholder(str)
  # progressive
  distill.teacher_steps = 64  # the teacher's DDIM steps, which the first round halves
  distill.rounds = 4  # halvings: the last student takes teacher_steps / 2^rounds steps
  distill.steps_per_round = 500  # training.num_train_steps = rounds · steps_per_round
  # what a Gaussian teacher's student predicts (its network starts from the teacher's all the same):
  # "auto" the teacher's prediction, but v for an ε teacher (Salimans & Ho §4: an ε student's
  # x̂ = (z - σε̂)/α is unstable at high noise, where its few steps start); or "eps" | "x0" | "v"
  distill.student_mean_type = "auto"
  # consistency
  distill.num_scales = 18  # N noise levels of EDM's grid (CM's CIFAR-10 CD); training: the last N
  distill.initial_scales = 11  # consistency training's first N (iCT: s0 + 1), doubling (iCT eq. 7)
  distill.target_ema = 0.95  # distillation's target network θ⁻ ← μ θ⁻ + (1 - μ) θ (CM's CIFAR-10)
  distill.distance = "pseudo_huber"  # iCT's, c = 0.00054 √dim; or "l2" (squared)
  return distill


# the fields each method reads (the others must keep their defaults)
METHOD_FIELDS = {
  "progressive": ("teacher_steps", "rounds", "steps_per_round", "student_mean_type"),
  "consistency": ("num_scales", "initial_scales", "target_ema", "distance"),
}

# the config blocks this family reads, each with its defaults: its own, and the teacher's diffusion,
# flow or EDM preconditioning (consistency training's network is EDM's)
CONFIG_BLOCKS = {
  "distill": default_config,
  "diffusion": gaussian.diffusion_config,
  "flow": flow_family.default_config,
  "edm": edm_family.default_config,
}

RANGES = {
  **dict.fromkeys(
    ["distill.teacher_steps", "distill.rounds", "distill.steps_per_round"], (1, True, None, False)
  ),
  **dict.fromkeys(["distill.num_scales", "distill.initial_scales"], (2, True, None, False)),
  "distill.target_ema": (0, True, 1, False),
}

# the blocks a student has of its teacher, by the teacher's family (copied by `complete` where the
# config leaves them)
TEACHER_BLOCKS = {
  "gaussian": ("model", "diffusion", "latent"),
  "flow": ("model", "flow", "latent"),
  "edm": ("model", "edm", "latent"),
}
TEACHERS = {"progressive": ("gaussian", "flow"), "consistency": ("gaussian", "edm")}
STUDENT_MEAN_TYPES = ("auto", *diffusion.MEAN_TYPES)


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The teacher run's config (None where distill.teacher_workdir has none)."""
  workdir = config.distill.teacher_workdir
  if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
    return None
  from configs import workdir as workdir_configs  # (configs imports the families)

  return workdir_configs.load(workdir)


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (in place) with its teacher's blocks (TEACHER_BLOCKS) where it has the family's
  defaults, and training.init_from_workdir the teacher's workdir."""
  teacher = teacher_config(config)
  if config.distill.teacher_workdir:  # (a missing one: training.init_from_workdir refuses it)
    config.training.init_from_workdir = config.distill.teacher_workdir
  if teacher is None or teacher.family not in TEACHER_BLOCKS:
    return config  # validate says what is wrong
  from configs import default  # (configs imports the families)

  defaults = default.get_config("distill")
  for block in TEACHER_BLOCKS[teacher.family]:
    if base.as_json(config[block]) == base.as_json(defaults[block]):
      config[block] = copy.deepcopy(teacher[block])
  return config


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """The method's fields and the teacher's own checks where its workdir exists (the jobs complete
  the config from it first; training.init_from_workdir, which `complete` sets, refuses one that does
  not)."""
  distill = config.distill
  if distill.method not in METHODS:
    return [f"distill.method={distill.method!r}: one of {', '.join(METHODS)}."]
  defaults = default_config()
  problems = [
    f"distill.{field}={distill[field]!r} is read by distill.method={method!r} only."
    for method, fields in METHOD_FIELDS.items()
    if method != distill.method
    for field in fields
    if distill[field] != defaults[field]
  ]
  if distill.method == "progressive" and not distill.teacher_workdir:
    problems.append("distill.teacher_workdir: set it to the teacher's workdir (a 'gaussian' run).")
  if problems:
    return problems
  init_from = config.training.init_from_workdir
  # (a workdir without a config: training.init_from_workdir's own problem)
  if init_from and init_from != distill.teacher_workdir and os.path.isdir(init_from):
    problems.append("training.init_from_workdir must be distill.teacher_workdir (or unset).")
  problems += teacher_problems(config) + base.no_likelihood_problems(config)
  if config.eval.num_loss_batches:
    problems.append(
      "eval.num_loss_batches: a student's loss is against its teacher or target network, which the "
      "held-out evaluation does not have: set 0 (feature-FD and FID measure students)."
    )
  if config.model.get("context_dim") or config.model.get("embedding_dim"):
    problems.append("model.context_dim / embedding_dim: distilling such teachers is not built.")
  if config.training.label_dropout:
    problems.append(
      f"training.label_dropout={config.training.label_dropout}: a student learns its teacher's "
      "conditional model on the true labels (guided distillation is not built): set 0."
    )
  for field in ("guidance_scale", "classifier_scale"):
    if 0 < config.sampling[field] < math.inf:
      problems.append(f"sampling.{field}: a distilled student samples without guidance (0).")
  method_problems = {"progressive": progressive_problems, "consistency": consistency_problems}
  return problems + unread_problems(config) + method_problems[distill.method](config)


def unread_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The fields of the diffusion, flow and EDM blocks (which the family carries for any kind of
  teacher) that the method and the teacher leave unread, where set away from their defaults."""
  teacher, distill = teacher_config(config), config.distill
  defaults = {
    "diffusion": gaussian.diffusion_config(),
    "flow": flow_family.default_config(),
    "edm": edm_family.default_config(),
  }
  every = {block: tuple(fields) for block, fields in defaults.items()}
  # the teacher's family; None: not known (a missing workdir, refused by its own check)
  kind = teacher.family if teacher is not None else None if distill.teacher_workdir else "none"
  unread, why = {
    ("progressive", "gaussian"): ({"edm": every["edm"], "flow": every["flow"]}, "a 'gaussian'"),
    ("progressive", "flow"): ({"edm": every["edm"], "diffusion": every["diffusion"]}, "a 'flow'"),
    ("progressive", None): ({"edm": every["edm"]}, "any"),
    # the σ range is the teacher's steps'
    ("consistency", "gaussian"): (
      {"edm": ("p_mean", "p_std", "sigma_min", "sigma_max"), "flow": every["flow"]},
      "a 'gaussian'",
    ),
    ("consistency", "edm"): ({"diffusion": every["diffusion"], "flow": every["flow"]}, "an 'edm'"),
    ("consistency", None): ({"flow": every["flow"]}, "any"),
    # consistency training: iCT's fixed log-normal levels, EDM's network
    ("consistency", "none"): (
      {"diffusion": every["diffusion"], "edm": ("p_mean", "p_std"), "flow": every["flow"]},
      "no (iCT's noise levels: P_mean = -1.1, P_std = 2)",
    ),
  }.get((distill.method, kind), ({}, ""))
  return [
    f"{block}.{field}={config[block][field]!r} is not read by distill.method="
    f"{distill.method!r} with {why} teacher: leave it unset."
    for block, fields in unread.items()
    for field in fields
    if config[block][field] != defaults[block][field]
  ]


def progressive_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The rounds fit the teacher's grid and the run; the student samples by DDIM (η = 0) on the
  distillation grid: trailing spacing, a number of steps that divides distill.teacher_steps; the
  values the Gaussian family refuses anyway are left to it."""
  distill, sampling_config = config.distill, config.sampling
  teacher = teacher_config(config)
  if teacher is not None and teacher.family == "flow":
    return flow_progressive_problems(config)
  problems = gaussian.validate(config) + rounds_problems(config)
  halves = not distill.teacher_steps % 2**distill.rounds  # (else rounds_problems says so)
  if halves and distill.teacher_steps > config.diffusion.num_timesteps:
    problems.append(
      f"distill.teacher_steps={distill.teacher_steps} exceeds the {config.diffusion.num_timesteps}"
      " timesteps."
    )
  sampler, spacing = sampling_config.sampler, sampling_config.timestep_spacing
  if sampler in gaussian.SAMPLERS and sampler != "ddim":
    problems.append(f"sampling.sampler={sampler!r}: a distilled student samples with 'ddim'.")
  if spacing in gaussian.TIMESTEP_SPACINGS and spacing != "trailing":
    problems.append(
      f"sampling.timestep_spacing={spacing!r}: a distilled student's grid is 'trailing'."
    )
  if 0 < sampling_config.eta < math.inf:
    problems.append("sampling.eta: a distilled student samples deterministically (0).")
  return problems


def flow_progressive_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A flow teacher's student samples by Euler on the teacher's grid."""
  problems = flow_family.validate(config) + rounds_problems(config)
  if config.distill.student_mean_type != default_config().student_mean_type:
    problems.append(
      f"distill.student_mean_type={config.distill.student_mean_type!r}: a flow teacher's student "
      "predicts its velocity (a Gaussian teacher's chooses)."
    )
  sampler = config.sampling.sampler
  if sampler in flow_family.SAMPLERS and sampler != "euler":
    problems.append(
      f"sampling.sampler={sampler!r}: a distilled flow student samples with 'euler' (the steps it "
      "learned)."
    )
  return problems


def rounds_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The rounds halve the teacher's steps, fill the run, and end at a divisor of the grid."""
  distill, problems = config.distill, []
  if distill.teacher_steps % 2**distill.rounds:
    problems.append(
      f"distill.teacher_steps={distill.teacher_steps} must halve distill.rounds={distill.rounds} "
      "times (a multiple of 2^rounds)."
    )
  if config.training.num_train_steps != distill.rounds * distill.steps_per_round:
    problems.append(
      f"training.num_train_steps={config.training.num_train_steps} must be distill.rounds × "
      f"distill.steps_per_round = {distill.rounds * distill.steps_per_round}."
    )
  steps = config.sampling.num_steps
  if steps is None or (steps > 0 and distill.teacher_steps % steps):
    problems.append(
      f"sampling.num_steps={steps} must divide distill.teacher_steps={distill.teacher_steps} "
      "(the student's grid is part of its teacher's)."
    )
  return problems


def consistency_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The grid, the distance and CM's sampler; without a teacher, EDM's network checks."""
  distill, problems = config.distill, []
  if distill.distance not in DISTANCES:
    problems.append(
      f"distill.distance={distill.distance!r}: one of {', '.join(DISTANCES)} (LPIPS: no "
      "perceptual network can be shipped here)."
    )
  if not distill.teacher_workdir and distill.initial_scales > distill.num_scales:
    problems.append(
      f"distill.initial_scales={distill.initial_scales} exceeds distill.num_scales="
      f"{distill.num_scales} (consistency training's curriculum grows to it)."
    )
  if config.sampling.sampler != "consistency":
    problems.append(
      f"sampling.sampler={config.sampling.sampler!r}: a consistency model samples with "
      "'consistency' (CM's multistep sampler)."
    )
  if config.sampling.num_steps is None:
    problems.append("sampling.num_steps: set the consistency sampler's steps (1: one step).")
  teacher = teacher_config(config)
  if teacher is not None and teacher.family == "gaussian":
    problems += gaussian.diffusion_problems(config.diffusion)
  elif not 0 < config.edm.sigma_min < config.edm.sigma_max:
    problems.append(
      f"edm.sigma_min={config.edm.sigma_min} and edm.sigma_max={config.edm.sigma_max} must "
      "satisfy 0 < sigma_min < sigma_max."
    )
  why = f"EDM's denoiser of {config.data.num_channels} data channels"
  if teacher is None:
    problems += base.unet_problems(
      config, config.data.num_channels, why, networks=base.IMAGE_NETWORKS
    )
  return problems


def teacher_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A teacher of a family the method takes, whose blocks, image size and channels the student
  has."""
  teacher = teacher_config(config)
  if teacher is None:
    return []
  families = TEACHERS[config.distill.method]
  if teacher.family not in families:
    return [
      f"distill.teacher_workdir: its config.family={teacher.family!r}; distill.method="
      f"{config.distill.method!r} takes a {' or '.join(repr(f) for f in families)} teacher."
    ]
  problems = [
    f"{block}.* must be the teacher's (leave them unset: they are copied)."
    for block in TEACHER_BLOCKS[teacher.family]
    if base.as_json(config[block]) != base.as_json(teacher[block])
  ]
  size = (config.data.image_size, config.data.num_channels)
  if size != (teacher.data.image_size, teacher.data.num_channels):
    problems.append(
      f"data.image_size, data.num_channels = {size}, but the teacher's are "
      f"{(teacher.data.image_size, teacher.data.num_channels)}."
    )
  return problems


def build(config: ml_collections.ConfigDict) -> base.Family:
  builders = {"progressive": build_progressive, "consistency": build_consistency}
  return builders[config.distill.method](config)


def build_progressive(config: ml_collections.ConfigDict) -> base.Family:
  teacher = teacher_config(config)
  if teacher is not None and teacher.family == "flow":
    return build_progressive_flow(config)
  teacher_diffusion = gaussian.make_diffusion(config)  # config.diffusion: the teacher's
  student_config = with_student_mean_type(config)
  if student_config.diffusion.mean_type == "eps":
    logging.warning(
      "distill.student_mean_type='eps': ε students lose to their teacher's own DDIM on the digits "
      "(x̂ = (z - σε̂)/α amplifies errors at high noise); v students distil well (docs/families.md)."
    )
  student = gaussian.build(student_config)  # the teacher's network, its DDIM sampler
  # the teacher's schedule, read as the student's prediction
  d = teacher_diffusion.replace(mean_type=student_config.diffusion.mean_type)
  model, distill = student.model, config.distill
  grid = jnp.asarray(diffusion.distillation_grid(d.num_timesteps, distill.teacher_steps))

  def x0_fn(params, labels, first_round=False, **kwargs):
    """The network's x̂0 at (z, k) through `predict_x0`: its output read as the student's
    prediction, or where `first_round` (traced) holds, as the teacher run's."""

    def x0(z, k):
      output = model.apply(
        params, z, gaussian.network_time_of(config.diffusion, k), labels, **kwargs
      )
      mean = diffusion.split_model_output(d, output, z)[0]
      as_student = diffusion.predict_x0(d, mean, z, k)
      return jnp.where(first_round, diffusion.predict_x0(teacher_diffusion, mean, z, k), as_student)

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
    # round 0's teacher is the teacher run, later ones are students
    teacher = x0_fn(family_state["teacher"], labels, family_state["round"] == 0, train=False)
    if config.sampling.clip_denoised:  # the teacher's DDIM as it samples: x̂ clipped to [-1, 1]
      teacher = clipped(teacher)
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

  return as_progressive_student(student, draw, loss, distill)


def clipped(x0_fn):
  """`x0_fn` (or a denoiser D(x, σ)) with its x̂0 clipped to the data's [-1, 1] (the samplers'
  clip_denoised)."""
  return lambda z, k: jnp.clip(x0_fn(z, k), -1.0, 1.0)


def with_student_mean_type(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose diffusion.mean_type is the student's (distill.student_mean_type)."""
  teacher_mean_type, chosen = config.diffusion.mean_type, config.distill.student_mean_type
  student = copy.deepcopy(config)
  if chosen != "auto":
    student.diffusion.mean_type = chosen
  elif teacher_mean_type == "eps":
    student.diffusion.mean_type = "v"
  return student


def as_progressive_student(student: base.Family, draw, loss, distill) -> base.Family:
  """`student` (its teacher's family) with the round's draws and loss, the teacher and the round in
  its family state, and at each round's end (`advance`) the student becoming the teacher."""

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


def build_progressive_flow(config: ml_collections.ConfigDict) -> base.Family:
  """A flow teacher's student: one Euler step of the ODE for the teacher's two, on the teacher's
  shifted grid of distill.teacher_steps (the flow family's Euler sampler's, of which each student's
  grid is every 2^r-th point)."""
  student = flow_family.build(config)
  model, distill, flow_config = student.model, config.distill, config.flow
  t_start, t_end = flow_family.sampling_interval(flow_config, "euler")
  # the times of grid points j = 0 … M: the data end first, as the Gaussian grid
  times = np.clip(flow.timesteps(distill.teacher_steps, flow_config.shift), t_end, t_start)
  grid = jnp.asarray(times[::-1].copy())

  def velocity_fn(params, labels, **kwargs):
    def velocity(x, t):
      out = model.apply(params, x, flow_config.time_scale * t, labels, None, **kwargs)
      return flow.to_velocity(flow_config.prediction, out, x, t, flow_config.path)

    return velocity

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    """Round r: j = 2^(r+1) i, i uniform; the teacher's two Euler steps j -> j - 2^r -> j - 2^(r+1)
    from x_t on the path give the target velocity."""
    x0 = batch["image"]
    stride = 2 ** family_state["round"]
    steps = distill.teacher_steps // (2 * stride)
    j = 2 * stride * jax.random.randint(keys.t, (x0.shape[0],), 1, steps + 1)
    labels = batch["label"] if model.num_classes else None
    noise = jax.random.normal(keys.noise, x0.shape, x0.dtype)
    t = grid[j]
    z_t = flow.interpolate(x0, noise, t, flow_config.path)
    teacher = velocity_fn(family_state["teacher"], labels, train=False)
    target = flow.euler_distillation_target(teacher, z_t, t, grid[j - stride], grid[j - 2 * stride])
    return {
      "z_t": z_t,
      "target": target,
      "t": t,
      "labels": labels,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t,
    }

  def loss(params, batch, draws, dropout_rng):
    """‖ṽ - v_θ(x_t, t)‖² per example, the mean over its elements."""
    del batch
    student_v = velocity_fn(params, draws["labels"], **base.apply_kwargs(dropout_rng))
    error = jax.lax.stop_gradient(draws["target"]) - student_v(draws["z_t"], draws["t"])
    return losses.mean_flat(error**2)

  return as_progressive_student(student, draw, loss, distill)


# (params, labels, **apply kwargs) -> D(x, σ): a network's denoiser, by its family
DenoiserOf = Callable[..., Callable[[jax.Array, jax.Array], jax.Array]]


def gaussian_denoiser(config: ml_collections.ConfigDict) -> tuple[DenoiserOf, float, float]:
  """A 'gaussian' run's network as D(x, σ) (`sampling.discrete_denoiser`, σ between its first and
  last step's), with (σ_min, σ_max)."""
  with jax.ensure_compile_time_eval():  # concrete arrays also when built inside a traced function
    d = gaussian.make_diffusion(config)
  model = models.get_model(config.model)

  def denoiser_of(params, labels, **kwargs):
    model_fn = lambda x_t, t: model.apply(
      params, x_t, gaussian.network_time_of(config.diffusion, t), labels, **kwargs
    )
    return sampling.discrete_denoiser(d, model_fn)

  return denoiser_of, *gaussian.discrete_sigma_range(d)


def edm_denoiser(config: ml_collections.ConfigDict) -> tuple[DenoiserOf, float, float]:
  """EDM's preconditioned network D(x, σ) (`edm.denoise`), with config.edm's (σ_min, σ_max)."""
  model, edm_config = models.get_model(config.model), config.edm

  def denoiser_of(params, labels, **kwargs):
    network_fn = lambda x_in, c_noise: model.apply(params, x_in, c_noise, labels, None, **kwargs)
    return lambda x, sigma: edm.denoise(network_fn, x, sigma, edm_config.sigma_data)

  return denoiser_of, edm_config.sigma_min, edm_config.sigma_max


DENOISERS = {"gaussian": gaussian_denoiser, "edm": edm_denoiser}


def build_consistency(config: ml_collections.ConfigDict) -> base.Family:
  """Consistency distillation from distill.teacher_workdir's run, or consistency training (iCT)
  without one (see the module's docstring)."""
  teacher = teacher_config(config)
  distilling = teacher is not None
  kind = teacher.family if distilling else "edm"  # the student's network: its teacher's kind
  denoiser_of, sigma_min, sigma_max = DENOISERS[kind](config)
  network = {"gaussian": gaussian.build, "edm": edm_family.build}[kind](config)
  model, distill, sigma_data = network.model, config.distill, config.edm.sigma_data
  num_scales, total_steps = distill.num_scales, config.training.num_train_steps

  def consistency_fn(params, labels, **kwargs):
    denoise_fn = denoiser_of(params, labels, **kwargs)
    return lambda x, sigma: edm.consistency_from_denoiser(
      denoise_fn, x, sigma, sigma_data, sigma_min
    )

  def distance(x, y):
    if distill.distance == "l2":
      return jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim)))
    return edm.pseudo_huber(x, y, 0.00054 * math.sqrt(math.prod(x.shape[1:])))

  def grid(scales):
    """σ_0 < … < σ_{N-1} of EDM's grid of `scales` points (traced), padded to num_scales."""
    return edm.consistency_sigmas(jnp.arange(num_scales), scales, sigma_min, sigma_max)

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    x0 = batch["image"]
    batch_size = x0.shape[0]
    labels = batch["label"] if model.num_classes else None
    z = jax.random.normal(keys.noise, x0.shape, x0.dtype)
    if distilling:  # CD: i uniform on N - 1 intervals, the teacher's Heun step down one
      scales = jnp.asarray(num_scales)
      i = jax.random.randint(keys.t, (batch_size,), 0, num_scales - 1)
    else:  # iCT: N(k) from the curriculum, i by the log-normal interval masses
      scales = edm.ict_num_scales(
        family_state["step"], total_steps, distill.initial_scales - 1, num_scales - 1
      )
      mass = edm.ict_index_probabilities(grid(scales))  # [num_scales - 1]; past N(k) - 1: none
      mass = jnp.where(jnp.arange(num_scales - 1) < scales - 1, mass, 0.0)
      i = jax.random.categorical(keys.t, jnp.log(mass), shape=(batch_size,))
    sigmas = grid(scales)
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    x_next = x0 + losses.expand_to(sigma_next, x0) * z
    draws = {
      "x_next": x_next,
      "sigma_next": sigma_next,
      "sigma": sigma,
      "labels": labels,
      "weight": base.unweighted(batch_size),
      "t_fraction": i / (scales - 2).clip(1),
    }
    if not distilling:
      return {**draws, "x": x0 + losses.expand_to(sigma, x0) * z}
    teacher_denoiser = denoiser_of(family_state["teacher"], labels, train=False)
    if kind == "gaussian" and config.sampling.clip_denoised:  # as the teacher's Heun sampler
      teacher_denoiser = clipped(teacher_denoiser)  # (the student's f and θ⁻'s stay unclipped)
    x = edm.heun_ode_step(teacher_denoiser, x_next, sigma_next, sigma)
    target = consistency_fn(family_state["target"], labels, train=False)(x, sigma)
    return {**draws, "x": x, "target": target}

  def loss(params, batch, draws, dropout_rng):
    del batch  # (in the draws)
    kwargs = base.apply_kwargs(dropout_rng)
    student = consistency_fn(params, draws["labels"], **kwargs)
    # CD: θ⁻'s output, drawn; iCT: θ⁻ = θ (the same dropout), under stop-gradient
    target_fn = (lambda x, sigma: draws["target"]) if distilling else student
    return edm.consistency_loss(
      student, target_fn, draws["x_next"], draws["sigma_next"], draws["x"], draws["sigma"], distance
    )

  def init_state(params):
    if distilling:  # the teacher (the student's start) and the target network, both θ at first
      return {"teacher": params, "target": params}
    return {"step": jnp.zeros((), jnp.int32)}  # iCT's curriculum reads the step

  def advance(state):
    family_state = state.family_state
    if not distilling:
      return state.replace(family_state={"step": state.step.astype(jnp.int32)})
    mu = distill.target_ema
    target = jax.tree_util.tree_map(
      lambda old, new: mu * old + (1.0 - mu) * new, family_state["target"], state.params
    )
    return state.replace(family_state={**family_state, "target": target})

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    """CM's multistep sampler on sampling.num_steps levels of EDM's grid from σ_max."""
    del progress, guide, workdir  # (a few network evaluations: no progress bar)
    shape = base.sample_shape(batch_size, config.data)
    num_steps = config.sampling.num_steps
    levels = edm.consistency_sigmas(jnp.arange(num_steps + 1), num_steps + 1, sigma_min, sigma_max)
    finish = latent.clip_samples(config)

    def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
      del guide_params, controls
      labels = (cond or base.Cond()).label if model.num_classes else None
      noise = jax.random.normal(rng, (num_steps,) + shape)
      if x_T is not None:  # the first level's draw: x = σ_max x_T
        noise = noise.at[0].set(x_T)
      f = consistency_fn(params, labels)
      return finish(edm.consistency_sample(f, noise, levels[::-1][:-1], sigma_min))

    return sample

  return base.Family(
    name=config.family,
    model=model,
    init_params=network.init_params,
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    conditions=("label",) * bool(model.num_classes),
    init_state=init_state,
    advance=advance,
  )
