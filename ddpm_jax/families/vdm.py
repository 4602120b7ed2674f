"""Variational Diffusion Models (Kingma et al. 2021): a U-Net ε̂(z_t; γ_t) and a fixed or learned
noise schedule γ trained jointly on the VLB in bits/dim, sampled ancestrally on equal steps of t."""

from __future__ import annotations

import jax
import ml_collections

from ddpm_jax import losses, models, vdm
from ddpm_jax.families import base, gaussian

SAMPLERS = ("ancestral",)  # sampling.sampler: ancestral sampling on sampling.num_steps equal steps
# shared fields whose default differs for this family
SHARED_DEFAULTS = {"sampling.sampler": "ancestral"}


def default_config() -> ml_collections.ConfigDict:
  """config.vdm: the noise schedule and loss of Variational Diffusion Models."""
  vdm_config = ml_collections.ConfigDict()
  vdm_config.noise_schedule = "learned"  # "fixed" (linear γ) | "learned" (monotone network)
  # γ = -log SNR at t = 0 and 1 (the learned endpoints start here)
  vdm_config.gamma_min, vdm_config.gamma_max = -13.3, 5.0
  vdm_config.n_features = 1024  # width of the learned schedule's monotone network
  vdm_config.num_steps = 0  # 0: continuous-time loss; T > 0: the T-step loss
  vdm_config.antithetic_time = True  # low-discrepancy t over the batch
  vdm_config.minimize_schedule_variance = True  # learned shape trained on the loss variance (§5.2)
  return vdm_config


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"vdm": default_config}


# config.vdm's numeric ranges (config_validation.RANGES' form)
RANGES = {"vdm.n_features": (1, True, None, False), "vdm.num_steps": (0, True, None, False)}


def validate(config: ml_collections.ConfigDict) -> list[str]:
  vdm_config, problems = config.vdm, []
  if vdm_config.noise_schedule not in vdm.SCHEDULES:
    problems.append(
      f"Unknown vdm.noise_schedule {vdm_config.noise_schedule!r}; valid: "
      f"{', '.join(vdm.SCHEDULES)}."
    )
  if not vdm_config.gamma_min < vdm_config.gamma_max:
    problems.append(
      f"vdm.gamma_min={vdm_config.gamma_min} must be below vdm.gamma_max={vdm_config.gamma_max}."
    )
  problems += base.unet_problems(
    config,
    config.data.num_channels,
    f"config.family='vdm' (ε-prediction) with {config.data.num_channels} channels",
  )
  if config.sampling.sampler not in SAMPLERS:
    problems.append(
      f"config.family='vdm' samples with sampling.sampler in {', '.join(SAMPLERS)}; got "
      f"{config.sampling.sampler!r}."
    )
  if config.sampling.guidance_scale:
    problems.append(
      f"sampling.guidance_scale={config.sampling.guidance_scale}: config.family='vdm' has no "
      "classifier-free guidance (it samples the conditional model as trained)."
    )
  return problems + base.no_guidance_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  vdm_config = config.vdm
  model = models.get_model(config.model)
  contexts = gaussian.cross_attention(config)  # cross-attention contexts, where model.context_dim

  def eps_fn(unet_params, cond=None, **apply_kwargs) -> vdm.EpsFn:
    """The U-Net as VDM's denoiser, conditioned on 1000·(γ_t - γ_min)/(γ_max - γ_min) as the
    paper, and on `cond`'s labels and contexts."""
    gamma_min, gamma_max = vdm_config.gamma_min, vdm_config.gamma_max
    cond = cond or base.Cond()
    return lambda z, gamma_t: model.apply(
      unet_params,
      z,
      1000.0 * (gamma_t - gamma_min) / (gamma_max - gamma_min),
      cond.label,
      cond.context,
      **apply_kwargs,
    )

  def init_params(rng):  # {"unet": …, "schedule": γ_0, γ_1 and the learned shape's network}
    schedule = vdm.init_schedule(
      jax.random.fold_in(rng, 1),
      vdm_config.noise_schedule,
      vdm_config.gamma_min,
      vdm_config.gamma_max,
      vdm_config.n_features,
    )
    return {"unet": contexts.init(model, rng, config.data), "schedule": schedule}

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    # t ∈ [0, 1), low-discrepancy
    t = vdm.time_samples(keys.t, x0.shape[0], vdm_config.antithetic_time)
    eps, eps_0 = (
      jax.random.normal(jax.random.fold_in(keys.noise, i), x0.shape, x0.dtype) for i in range(2)
    )
    return {
      "t": t,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t,
      "eps": eps,
      "recon_eps": eps_0,
      "labels": base.conditioning_labels(
        keys.labels, batch, config.model, config.training.label_dropout
      ),
      "context": contexts.of_batch(keys, batch),
    }

  def loss(params, batch, draws, dropout_rng):  # the VLB in bits/dim (VDM eq. 11)
    cond = base.Cond(draws["labels"], draws["context"])
    denoiser = eps_fn(params["unet"], cond, **base.apply_kwargs(dropout_rng))
    terms = vdm.vlb_terms(
      params["schedule"],
      denoiser,
      batch["image"],
      draws["t"],
      draws["eps"],
      draws["recon_eps"],
      vdm_config.num_steps,
      vdm_config.minimize_schedule_variance,
    )
    return losses.bits_per_dim(terms["total"], batch["image"])

  num_steps = config.sampling.num_steps or 1000

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params, controls
      eps = eps_fn(params["unet"], cond)
      return vdm.ancestral_trajectory(params["schedule"], eps, num_steps)

    return trajectory

  def bits_per_dim(params, x0, rng, cond=None):  # one low-discrepancy t per example: unbiased
    t_rng, noise_rng, recon_rng = jax.random.split(rng, 3)
    terms = vdm.vlb_terms(
      params["schedule"],
      eps_fn(params["unet"], cond),
      x0,
      vdm.time_samples(t_rng, x0.shape[0]),
      jax.random.normal(noise_rng, x0.shape),
      jax.random.normal(recon_rng, x0.shape),
      vdm_config.num_steps,
    )
    return {"bpd": losses.bits_per_dim(terms["total"], x0)}

  def clip_mask(params):
    """A learned schedule's shape follows the gradient of its own objective and scale (∇E[L²]): kept
    out of the clipping norm, which it would otherwise dominate and so scale the network's gradient
    down."""
    return jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path[:2]) != "['schedule']['net']", params
    )

  return base.Family(
    name="vdm",
    model=model,
    init_params=init_params,
    draw=draw,
    loss=loss,
    make_sampler=base.make_trajectory_sampler(make_trajectory, config.data),
    make_trajectory=make_trajectory,
    conditions=gaussian.label_and_contexts(config, contexts),
    bits_per_dim=bits_per_dim,
    clip_mask=clip_mask if vdm_config.noise_schedule == "learned" else None,
  )
