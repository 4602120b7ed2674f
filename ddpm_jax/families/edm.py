"""EDM (Karras et al. 2022): the U-Net as the network F of the preconditioned denoiser D(x; σ)
(ddpm_jax/edm.py), trained at log-normal σ with EDM's loss weighting, sampled by the σ-space solvers
(sampling.sigma_sample; EDM's Heun with 18 steps by default) on EDM's grid between edm.sigma_min and
edm.sigma_max, with classifier-free guidance for class-conditional models. No likelihood.

config.edm: sigma_data, p_mean, p_std, sigma_min, sigma_max (the grid; sampling.sigma_min/max
override them), and config.sampling's sampler (a σ-space solver), num_steps, rho and churn.
"""

from __future__ import annotations

import jax
import ml_collections

from ddpm_jax import edm, models, sampling
from ddpm_jax.families import base, gaussian, latent

# shared fields whose default differs for this family: Heun's 2nd order solver; no likelihood
SAMPLERS = tuple(sampling.SIGMA_SOLVERS)  # sampling.sampler: a σ-space solver on EDM's grid
SHARED_DEFAULTS = {"sampling.sampler": "heun", "eval.bpd_num_batches": 0}


# (x, σ, D) -> ε = (x - D)/σ and back: where guidance_rescale acts on EDM's denoiser (the noise
# prediction D implies, as Lin et al. rescale ε / v)
DENOISER_AS_EPS = (
  lambda x, sigma, denoised: (x - denoised) / sigma[:, None, None, None],
  lambda x, sigma, eps: x - sigma[:, None, None, None] * eps,
)


def default_config() -> ml_collections.ConfigDict:
  """config.edm: EDM's preconditioning, training noise levels and sampling grid."""
  edm_config = ml_collections.ConfigDict()
  edm_config.sigma_data = 0.5  # the data's standard deviation, for the preconditioning
  edm_config.p_mean, edm_config.p_std = -1.2, 1.2  # training: ln σ ~ N(p_mean, p_std²)
  edm_config.sigma_min, edm_config.sigma_max = 0.002, 80.0  # the sampling grid's ends
  return edm_config


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"edm": default_config}


# config.edm's numeric ranges (config_validation.RANGES' form)
RANGES = dict.fromkeys(
  ["edm.p_std", "edm.sigma_data", "edm.sigma_max", "edm.sigma_min"], (0, False, None, False)
)


def validate(config: ml_collections.ConfigDict) -> list[str]:
  edm_config, problems = config.edm, []
  if config.sampling.sampler not in SAMPLERS:
    problems.append(
      f"config.family='edm' samples with a σ-space solver: sampling.sampler must be one of "
      f"{', '.join(sampling.SIGMA_SOLVERS)}, not {config.sampling.sampler!r}."
    )
  if not 0 < edm_config.sigma_min < edm_config.sigma_max:
    problems.append(
      f"edm.sigma_min={edm_config.sigma_min} and edm.sigma_max={edm_config.sigma_max} must satisfy "
      "0 < sigma_min < sigma_max."
    )
  problems += base.no_likelihood_problems(config)
  why = f"EDM's denoiser of {config.data.num_channels} data channels"
  problems += base.unet_problems(
    config, config.data.num_channels, why, networks=base.IMAGE_NETWORKS
  )
  return problems + base.no_guidance_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  model, edm_config = models.get_model(config.model), config.edm
  sigma_data = edm_config.sigma_data
  contexts = gaussian.cross_attention(config)  # cross-attention contexts, where model.context_dim

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    sigma = edm.sample_sigma(keys.t, x0.shape[0], edm_config.p_mean, edm_config.p_std)
    return {
      "sigma": sigma,
      "noise": jax.random.normal(keys.noise, x0.shape, x0.dtype),
      "weight": base.unweighted(x0.shape[0]),
      # the quantile of ln σ: uniform in [0, 1], for the per-quartile loss logs
      "t_fraction": jax.scipy.stats.norm.cdf(
        (jax.numpy.log(sigma) - edm_config.p_mean) / edm_config.p_std
      ),
      "labels": base.conditioning_labels(
        keys.labels, batch, config.model, config.training.label_dropout
      ),
      "context": contexts.of_batch(keys, batch),
    }

  def loss(params, batch, draws, dropout_rng):
    kwargs = base.apply_kwargs(dropout_rng)
    labels, context = draws["labels"], draws["context"]
    network_fn = lambda x, c_noise: model.apply(params, x, c_noise, labels, context, **kwargs)
    return edm.loss(network_fn, batch["image"], draws["sigma"], draws["noise"], sigma_data)

  sampling_config = config.sampling

  def guided_denoiser(params, cond, controls):
    """D(x; σ) given `cond`'s labels and contexts, guided without a classifier towards them where
    sampling.guidance_scale is on (`gaussian.free_guidance`; the rescale on D's ε)."""
    scale = {"guidance_scale": sampling_config.guidance_scale, **(controls or {})}

    def denoiser_given(y, conditions):
      context = conditions["context"]
      network_fn = lambda x_in, c_noise: model.apply(params, x_in, c_noise, y, context)
      return lambda x, sigma: edm.denoise(network_fn, x, sigma, sigma_data)

    return gaussian.free_guidance(
      denoiser_given,
      cond or base.Cond(),
      (contexts,),
      sampling_config,
      scale["guidance_scale"],
      config.data.num_channels,
      DENOISER_AS_EPS,
    )

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params
      denoise_fn = guided_denoiser(params, cond, controls)
      sigma_range = edm_config.sigma_min, edm_config.sigma_max
      return gaussian.sigma_space_trajectory(denoise_fn, *sigma_range, sampling_config)

    return trajectory

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    del workdir
    shape = base.sample_shape(batch_size, config.data)
    clip = latent.clip_samples(config)
    return base.trajectory_sampler(make_trajectory(guide), shape, progress, clip)

  def make_latent_codec(num_steps: int):
    """The probability-flow ODE by Heun on EDM's grid (`gaussian.sigma_ode_latent_codec`)."""
    sigma_range = edm_config.sigma_min, edm_config.sigma_max
    denoiser = lambda params, cond: guided_denoiser(params, cond, None)
    return gaussian.sigma_ode_latent_codec(denoiser, sampling_config, num_steps, *sigma_range)

  return base.Family(
    name="edm",
    model=model,
    init_params=lambda rng: contexts.init(model, rng, config.data),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    make_trajectory=make_trajectory,
    make_latent_codec=make_latent_codec,
    sample_controls=("guidance_scale",),
    conditions=gaussian.label_and_contexts(config, contexts),
  )
