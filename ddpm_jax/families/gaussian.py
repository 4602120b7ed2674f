"""Gaussian diffusion on a discrete β schedule: DDPM, Improved DDPM, ADM (ε / x0 / v models, fixed
or learned variance, the mse / hybrid / kl losses, importance-sampled t), sampled ancestrally, by
DDIM or DPM-Solver++ with classifier-free or classifier guidance; likelihood by the full VLB
(calc_bpd_loop)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from ddpm_jax import diffusion, models, sampling, schedules
from ddpm_jax.families import base, latent


def diffusion_config() -> ml_collections.ConfigDict:
  """config.diffusion: the discrete Gaussian diffusion (DDPM, Improved DDPM, ADM) of the families
  gaussian, classifier (its noise process) and super_res."""
  diffusion = ml_collections.ConfigDict()
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = "linear"
  diffusion.mean_type = "eps"
  diffusion.var_type = "fixed_large"
  diffusion.loss_type = "mse"
  diffusion.timestep_sampler = "uniform"  # or "loss_aware" (Improved DDPM §3.3, for the kl losses)
  # β rescaled to zero terminal SNR, ᾱ_T = 0 (Lin et al. 2024): needs mean_type "v" (or "x0"), and
  # sampling.timestep_spacing "trailing" for DDIM to start at ᾱ_T = 0
  diffusion.zero_terminal_snr = False
  # the network sees t·1000/T instead of t (improved-diffusion's default; its converted checkpoints)
  diffusion.rescale_timesteps = False
  return diffusion


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"diffusion": diffusion_config}

TIMESTEP_SAMPLERS = ("uniform", "loss_aware")
TIMESTEP_SPACINGS = ("default", "trailing")


def with_timestep_spacing(gaussian, num_steps: int | None, sampling_config):
  """(diffusion, num_steps) for a respacing sampler: respaced here to `num_steps` trailing steps
  (sampling.timestep_spacing="trailing"), else as given, for the sampler's own grid."""
  if sampling_config.timestep_spacing != "trailing" or num_steps is None:
    return gaussian, num_steps
  kept = sampling.space_timesteps(gaussian.num_timesteps, f"trailing{num_steps}")
  return diffusion.respace(gaussian, kept), None


# A sampler of the discrete diffusion: (gaussian, model_fn, num_steps, controls, sampling_config,
# clip_denoised, cond_fn) -> its sampling.Trajectory, for sampling and editing alike.


def ddpm(gaussian, model_fn, num_steps, controls, sampling_config, clip_denoised, cond_fn):
  del controls
  gaussian, num_steps = with_timestep_spacing(gaussian, num_steps, sampling_config)
  return sampling.ddpm_trajectory(gaussian, model_fn, num_steps, clip_denoised, cond_fn)


def ddim(gaussian, model_fn, num_steps, controls, sampling_config, clip_denoised, cond_fn):
  gaussian, num_steps = with_timestep_spacing(gaussian, num_steps or 50, sampling_config)
  eta = controls["eta"]
  return sampling.ddim_trajectory(gaussian, model_fn, num_steps, eta, clip_denoised, cond_fn)


def dpm_solver(gaussian, model_fn, num_steps, controls, sampling_config, clip_denoised, cond_fn):
  del controls, sampling_config
  return sampling.dpm_solver_trajectory(gaussian, model_fn, num_steps or 20, clip_denoised, cond_fn)


def sigma_grid(sampling_config, num_steps: int, sigma_min: float, sigma_max: float):
  """EDM's grid (sampling.rho) between sampling.sigma_min/max, or else the model's own range."""
  return sampling.karras_sigmas(
    num_steps,
    sampling_config.sigma_min or sigma_min,
    sampling_config.sigma_max or sigma_max,
    sampling_config.rho,
  )


# EDM's stochastic churn of the σ-space solvers (config.sampling), in sigma_solver_options' order
CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")


def sigma_space_trajectory(
  denoise_fn, sigma_min: float, sigma_max: float, sampling_config
) -> sampling.Trajectory:
  """The σ-space solver `sampling_config.sampler` on EDM's grid of sampling.num_steps (None: 18 for
  heun, EDM's 35 network calls, else 35) between the model's `sigma_min` and `sigma_max`, with
  EDM's churn (euler, heun) and s_noise (the stochastic solvers) from config.sampling."""
  solver = sampling_config.sampler
  num_steps = sampling_config.num_steps or (18 if solver == "heun" else 35)
  with jax.ensure_compile_time_eval():  # concrete, also when built inside a traced function
    sigmas = sigma_grid(sampling_config, num_steps, sigma_min, sigma_max)
  options = sampling.sigma_solver_options(solver, *(sampling_config[name] for name in CHURN))
  return sampling.sigma_trajectory(denoise_fn, sigmas, solver, **options)


def discrete_sigma_range(gaussian) -> tuple[float, float]:
  """(σ_min, σ_max) of the discrete diffusion's steps, concrete (closed over by the samplers)."""
  with jax.ensure_compile_time_eval():  # also when built inside a traced function
    sigmas_t = np.asarray(sampling.discrete_sigmas(gaussian))
  return float(sigmas_t[0]), float(sigmas_t[-1])


def sigma_solver(gaussian, model_fn, num_steps, controls, sampling_config, clip_denoised, cond_fn):
  """The σ-space solvers on the discrete model's denoiser (sampling.discrete_denoiser)."""
  del num_steps, controls  # sampling_config's
  denoise_fn = sampling.discrete_denoiser(gaussian, model_fn, clip_denoised, cond_fn)
  return sigma_space_trajectory(denoise_fn, *discrete_sigma_range(gaussian), sampling_config)


# config.sampling.sampler -> its trajectory; num_steps None: all T (ddpm), 50 (ddim), 20
# (dpm_solver); the σ-space solvers on EDM's grid.
SAMPLERS = {
  "ddpm": ddpm,
  "ddim": ddim,
  "dpm_solver": dpm_solver,
  **{solver: sigma_solver for solver in sampling.SIGMA_SOLVERS},
}


def configured_trajectory(
  gaussian, model_fn, controls, sampling_config, cond_fn=None
) -> sampling.Trajectory:
  """The trajectory of sampling.sampler on `model_fn` with the config's steps and clipping."""
  return SAMPLERS[sampling_config.sampler](
    gaussian,
    model_fn,
    sampling_config.num_steps,
    controls,
    sampling_config,
    sampling_config.clip_denoised,
    cond_fn,
  )


def ddim_latent_codec(gaussian, model, sampling_config, num_steps: int):
  """DDIM's ODE (η = 0) on `num_steps` steps of the network `model(params, cond, x0) -> model_fn`
  (x0 None when decoding): (encode(params, x0, cond) -> x_T, decode(params, x_T, cond) -> x0)."""
  respaced, grid_steps = with_timestep_spacing(gaussian, num_steps, sampling_config)

  def encode(params, x0, cond=None):
    return sampling.ddim_encode(respaced, model(params, cond, x0), x0, grid_steps)

  def decode(params, x_T, cond=None):
    rng = jax.random.key(0)  # η = 0: no noise is drawn
    return sampling.ddim_sample(
      respaced, model(params, cond, None), rng, x_T=x_T, num_steps=grid_steps, clip_denoised=False
    )

  return encode, decode


# The sampling values a compiled sampler takes as arguments (`controls`), so that changing them does
# not compile it again; config.sampling gives their defaults.
CONTROLS = ("guidance_scale", "classifier_scale", "eta")


def make_diffusion(
  config: ml_collections.ConfigDict, continuous_data: bool = False
) -> diffusion.GaussianDiffusion:
  """The diffusion of `config.diffusion` (also the noise process of the noisy classifier), whose
  decoder is continuous data's density in an autoencoder's latents or where `continuous_data`."""
  diffusion_config = config.diffusion
  betas = schedules.get_beta_schedule(
    diffusion_config.beta_schedule, diffusion_config.num_timesteps
  )
  if diffusion_config.zero_terminal_snr:
    betas = schedules.rescale_zero_terminal_snr(betas)
  continuous_data = continuous_data or latent.latent_workdir(config) is not None
  return diffusion.GaussianDiffusion.from_betas(
    betas,
    diffusion_config.mean_type,
    diffusion_config.var_type,
    diffusion_config.loss_type,
    decoder="continuous" if continuous_data else "discretized",
  )


def timestep_draws(keys: base.StepKeys, x0, num_timesteps: int, loss_history=None) -> base.Draws:
  """t (uniform, or importance-sampled by `loss_history`) with its weight, and ε, for the examples
  x0 [B, H, W, C]: the draws of every loss on the discrete diffusion."""
  t, weight = diffusion.sample_timesteps(keys.t, x0.shape[0], num_timesteps, loss_history)
  return {
    "t": t,
    "weight": weight,
    "t_fraction": t / num_timesteps,
    "eps": jax.random.normal(keys.noise, x0.shape, x0.dtype),
  }


def diffusion_problems(diffusion_config: ml_collections.ConfigDict) -> list[str]:
  """A loss that cannot train the variance (the choices of config.diffusion: config_validation)."""
  return diffusion.loss_variance_problems(diffusion_config.var_type, diffusion_config.loss_type)


def validate(
  config: ml_collections.ConfigDict,
  embeddings: bool = True,
  networks: tuple[str, ...] = base.IMAGE_NETWORKS,
) -> list[str]:
  """The family's problems; `embeddings`: whether model.embedding_dim (data embeddings, the unCLIP
  decoder) is allowed, `networks` the model.name allowed (both narrower for the families that
  build on this one's checks)."""
  problems = diffusion_sampling_problems(config)
  learned = config.diffusion.var_type in diffusion.LEARNED_VAR_TYPES
  channels = config.data.num_channels * (2 if learned else 1)
  problems += base.unet_problems(
    config,
    channels,
    f"{config.data.num_channels} data channels with var_type={config.diffusion.var_type!r}",
    embeddings,
    networks,
  )
  return problems


def diffusion_sampling_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The diffusion's, the sampler's name and the sampling options' problems (of any network)."""
  problems = diffusion_problems(config.diffusion)
  if config.sampling.sampler not in SAMPLERS:
    problems.append(
      f"Unknown sampling.sampler {config.sampling.sampler!r}; valid: {', '.join(SAMPLERS)}."
    )
  in_latents = latent.latent_workdir(config) and not latent.latent_problems(config)
  if config.sampling.clip_denoised and in_latents:
    problems.append(
      "sampling.clip_denoised=True clips x̂0 to the pixels' [-1, 1], a range latents do not keep "
      "to: set sampling.clip_denoised=False (latent.autoencoder_workdir is set)."
    )
  return problems + schedule_sampling_problems(config)


def schedule_sampling_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Sampling options out of range, and what cannot run at ᾱ_T = 0: an ε-model (x0 = ∞ · ε at
  t = T). (The samplers on log-SNR and σ grids take ᾱ_T as sampling.ZERO_SNR_ALPHA_BAR.)"""
  sampling_config, problems = config.sampling, []
  spacing = sampling_config.timestep_spacing
  if spacing not in TIMESTEP_SPACINGS:
    problems.append(
      f"Unknown sampling.timestep_spacing {spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}."
    )
  if not config.diffusion.zero_terminal_snr:
    return problems
  if config.diffusion.mean_type == "eps":
    problems.append(
      "diffusion.zero_terminal_snr=True makes ᾱ_T = 0, where an ε-prediction determines nothing "
      "(x0 = (x_T - √(1 - ᾱ_T) ε)/√ᾱ_T): set diffusion.mean_type='v' (Lin et al. 2024) or 'x0'."
    )
  return problems


class Conditioning(NamedTuple):
  """A per-example input c of the U-Net besides (x_t, t, label): the `base.Cond` field `field`
  (the Gaussian family's cross-attention contexts [B, L, D] and embeddings [B, D]; the
  super-resolution family's low-resolution images), used where `active`."""

  field: str
  active: bool
  # (keys, batch) -> the c training sees (None: none)
  of_batch: Callable[[base.StepKeys, base.Batch], base.Array | None]
  # x0 -> the c of data when none is given (bits/dim); None: none
  of_images: Callable[[base.Array], base.Array | None]
  # (x, c) -> (x, keywords of the U-Net's call)
  unet_inputs: Callable[[base.Array, base.Array | None], tuple[base.Array, dict]]
  # c -> the unconditional model's (classifier-free guidance)
  null: Callable[[base.Array | None], base.Array | None]
  # -> the c of `model.init` (None: none)
  dummy: Callable[[], base.Array | None]

  def init(self, model, rng, data_config):
    """The U-Net's parameters, initialised on a dummy batch with this conditioning's inputs."""
    return init_unet((self,), model, rng, data_config)


def unet_inputs(conditionings, x_t, conditions: dict) -> tuple[base.Array, dict]:
  """(x, keywords) of the U-Net's call given each conditioning's c in `conditions` {field: c}."""
  x, kwargs = x_t, {}
  for conditioning in conditionings:
    x, more = conditioning.unet_inputs(x, conditions.get(conditioning.field))
    kwargs.update(more)
  return x, kwargs


def init_unet(conditionings, model, rng, data_config):
  """The U-Net's parameters, initialised on a dummy batch with the conditionings' inputs."""
  x, t = base.dummy_inputs(data_config)
  dummies = {c.field: c.dummy() for c in conditionings}
  x, kwargs = unet_inputs(conditionings, x, dummies)
  return model.init(rng, x, t, None, **kwargs)


def dropped_array(
  config: ml_collections.ConfigDict,
  field: str,
  active: bool,
  batch_key: str | None = None,
  keyword: str | None = None,
  dummy: Callable[[], base.Array | None] = lambda: None,
) -> Conditioning:
  """The data's per-example array batch[`batch_key`] (default: `field`) as the `Cond` field `field`,
  given to the network as the keyword `keyword` (default: `field`) and dropped to ∅ = 0 together
  with the label at training.label_dropout (classifier-free guidance)."""
  batch_key, keyword = batch_key or field, keyword or field
  return Conditioning(
    field=field,
    active=active,
    of_batch=lambda keys, batch: base.dropped_condition(
      keys.labels, batch, batch_key, config.training.label_dropout
    ),
    of_images=lambda x0: None,
    unet_inputs=lambda x, value: (x, {keyword: value}),
    null=base.null_context,
    dummy=dummy,
  )


def cross_attention(config: ml_collections.ConfigDict) -> Conditioning:
  """Contexts [B, L, D] the U-Net cross-attends to (data.context_key; none without it)."""
  active = bool(config.model.get("context_dim"))
  return dropped_array(config, "context", active, dummy=lambda: base.dummy_context(config.model))


def label_and_contexts(
  config: ml_collections.ConfigDict, contexts: Conditioning
) -> tuple[str, ...]:
  """`Family.conditions` of a family conditioned on class labels (model.num_classes) and
  cross-attention `contexts` where active."""
  return ("label",) * bool(config.model.get("num_classes")) + ("context",) * contexts.active


def image_embedding(config: ml_collections.ConfigDict) -> Conditioning:
  """An embedding [B, D] of each image (data.embedding_key; unCLIP's decoder, e.g. CLIP's image
  embedding), projected into the time embedding and model.embedding_tokens context tokens."""
  return dropped_array(config, "embedding", bool(config.model.get("embedding_dim")))


def free_guidance(
  with_condition: Callable,
  cond: base.Cond,
  conditionings: tuple[Conditioning, ...],
  sampling_config: ml_collections.ConfigDict,
  guidance_scale,
  num_channels: int,
  rescale_space: tuple[Callable, Callable] | None = None,
) -> Callable:
  """The network `with_condition(label, conditions) -> fn(x, noise level)` given `cond`'s label
  and its fields of `conditionings` ({field: c}), guided without a classifier towards them where
  sampling.guidance_scale is on (on for any `guidance_scale` passed later; unconditional: the
  null label and each conditioning's `null`), with sampling.guidance_rescale, on the first
  sampling.guidance_channels (else all `num_channels`) channels
  (`sampling.classifier_free_guidance`)."""
  conditions = {c.field: getattr(cond, c.field) for c in conditionings}
  conditional = with_condition(cond.label, conditions)
  unconditioned = cond.label is None and all(c is None for c in conditions.values())
  if unconditioned or not sampling_config.guidance_scale:
    return conditional
  null = {c.field: c.null(conditions[c.field]) for c in conditionings}
  return sampling.classifier_free_guidance(
    conditional,
    with_condition(None, null),
    guidance_scale,
    sampling_config.get("guidance_channels") or num_channels,
    sampling_config.guidance_rescale,
    rescale_space,
  )


def sigma_ode_latent_codec(denoiser, sampling_config, num_steps: int, sigma_min, sigma_max):
  """A family's `make_latent_codec(num_steps)` from `denoiser(params, cond) -> D(x; σ)`: the
  probability-flow ODE by Heun on EDM's grid of `num_steps` levels between the model's σ range
  (`sampling.sigma_ode_codec`), as (encode(params, x0, cond) -> z, decode(params, z, cond) ->
  x0)."""
  with jax.ensure_compile_time_eval():
    sigmas = sigma_grid(sampling_config, num_steps, sigma_min, sigma_max)[:-1]

  def encode(params, x0, cond=None):
    return sampling.sigma_ode_codec(denoiser(params, cond), sigmas)[0](x0)

  def decode(params, z, cond=None):
    return sampling.sigma_ode_codec(denoiser(params, cond), sigmas)[1](z)

  return encode, decode


def x0_as_v(gaussian) -> tuple[Callable, Callable]:
  """(x_t, t, x̂0) -> v̂ and back: where guidance_rescale acts for an x0-model (Lin et al. rescale
  v; x̂0 = √ᾱ x_t - √(1-ᾱ) v̂ stays finite at ᾱ_T = 0)."""

  def to_v(x_t, t, x0):
    return diffusion.get_v(gaussian, x0, diffusion.predict_eps_from_x0(gaussian, x_t, t, x0), t)

  return to_v, lambda x_t, t, v: diffusion.predict_x0_from_v(gaussian, x_t, t, v)


def network_time_of(diffusion_config: ml_collections.ConfigDict, t):
  """The t the network sees: t·1000/T with diffusion.rescale_timesteps (improved-diffusion)."""
  if diffusion_config.rescale_timesteps:
    return t * (1000.0 / diffusion_config.num_timesteps)
  return t


def build(
  config: ml_collections.ConfigDict, conditionings: tuple[Conditioning, ...] | None = None
) -> base.Family:
  """The family; `conditionings` (default: `cross_attention` and `image_embedding`) are what else
  the U-Net sees."""
  conditionings = conditionings or (cross_attention(config), image_embedding(config))
  gaussian = make_diffusion(config)
  model = models.get_model(config.model)
  num_timesteps = gaussian.num_timesteps
  loss_aware = config.diffusion.timestep_sampler == "loss_aware"
  network_time = lambda t: network_time_of(config.diffusion, t)

  def apply(params, x_t, t, labels, conditions, **kwargs):
    x, inputs = unet_inputs(conditionings, x_t, conditions)
    return model.apply(params, x, network_time(t), labels, **inputs, **kwargs)

  def draw(keys: base.StepKeys, batch: base.Batch, loss_history) -> base.Draws:
    label_dropout = config.training.label_dropout
    return {
      **timestep_draws(keys, batch["image"], num_timesteps, loss_history),
      "labels": base.conditioning_labels(keys.labels, batch, config.model, label_dropout),
      "conditions": {c.field: c.of_batch(keys, batch) for c in conditionings},
    }

  def loss(params, batch, draws, dropout_rng):
    kwargs = base.apply_kwargs(dropout_rng)
    labels, conditions = draws["labels"], draws["conditions"]
    model_fn = lambda x_t, t: apply(params, x_t, t, labels, conditions, **kwargs)
    return diffusion.training_losses(gaussian, model_fn, batch["image"], draws["t"], draws["eps"])[
      "loss"
    ]

  sampling_config = config.sampling
  # guidance_rescale acts on the noise prediction (Lin et al.: v): an x0-model's output as v
  rescale_space = x0_as_v(gaussian) if config.diffusion.mean_type == "x0" else None

  def guided_model(params, cond, guide, guide_params, controls):
    """-> (model_fn, cond_fn, controls) of the sampler: classifier-free guidance of a conditional
    model, classifier guidance by `guide`."""
    cond = cond or base.Cond()
    controls = {**{name: sampling_config[name] for name in CONTROLS}, **(controls or {})}
    cond_fn = None
    if guide is not None:  # classifier guidance by a noisy classifier (ADM §4)
      # at the network's t, as guided-diffusion's samplers call cond_fn
      log_prob_fn = lambda x_t, t: jax.nn.log_softmax(
        guide.apply(guide_params, x_t, network_time(t))
      )
      cond_fn = sampling.classifier_guidance(log_prob_fn, cond.label, controls["classifier_scale"])
      # an unconditional diffusion model ignores them
      cond = cond._replace(label=cond.label if model.num_classes else None)
    model_fn = free_guidance(
      lambda y, conditions: lambda x_t, t: apply(params, x_t, t, y, conditions),
      cond,
      conditionings,
      sampling_config,
      controls["guidance_scale"],
      config.data.num_channels,
      rescale_space,
    )
    return model_fn, cond_fn, controls

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    def trajectory(params, cond=None, guide_params=None, controls=None):
      model_fn, cond_fn, controls = guided_model(params, cond, guide, guide_params, controls)
      return configured_trajectory(gaussian, model_fn, controls, sampling_config, cond_fn)

    return trajectory

  def make_latent_codec(num_steps: int):
    """DDIM's ODE (η = 0) on `num_steps` steps (`ddim_latent_codec`)."""
    model = lambda params, cond, x0: guided_model(params, cond, None, None, None)[0]
    return ddim_latent_codec(gaussian, model, sampling_config, num_steps)

  def bits_per_dim(params, x0, rng, cond=None):
    cond = cond or base.Cond()
    conditions = {}
    for c in conditionings:
      given = getattr(cond, c.field)
      conditions[c.field] = c.of_images(x0) if given is None else given
    model_fn = lambda x_t, t: apply(params, x_t, t, cond.label, conditions)
    return {"bpd": diffusion.calc_bpd_loop(gaussian, model_fn, x0, rng)["total_bpd"]}

  def init_params(rng):
    return init_unet(conditionings, model, rng, config.data)

  def update_state(loss_history, draws, per_example):
    if loss_history is None:
      return None
    return diffusion.update_loss_history(loss_history, draws["t"], per_example)

  return base.Family(
    name=config.family,
    model=model,
    init_params=init_params,
    draw=draw,
    loss=loss,
    make_sampler=base.make_trajectory_sampler(make_trajectory, config.data),
    make_trajectory=make_trajectory,
    make_latent_codec=make_latent_codec,
    sample_controls=CONTROLS,
    conditions=("label",) * bool(model.num_classes)
    + tuple(c.field for c in conditionings if c.active),
    bits_per_dim=bits_per_dim,
    init_state=lambda params: diffusion.init_loss_history(num_timesteps) if loss_aware else None,
    update_state=update_state,
  )
