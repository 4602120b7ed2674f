"""Score SDEs (Song et al. 2021): VP, subVP and VE SDEs trained by continuous-time denoising score
matching with an ε-predicting U-Net, sampled by predictor-corrector; likelihood by the
probability-flow ODE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import models, sampling, sde
from ddpm_jax.families import base, gaussian

SDE_TYPES = ("vp", "subvp", "ve")


def make_sde(sde_config: ml_collections.ConfigDict):
  """The SDE of `sde_config.type`."""
  if sde_config.type == "ve":
    return sde.VESDE(sde_config.sigma_min, sde_config.sigma_max, N=sde_config.num_scales)
  sde_class = {"vp": sde.VPSDE, "subvp": sde.subVPSDE}[sde_config.type]
  return sde_class(sde_config.beta_min, sde_config.beta_max, N=sde_config.num_scales)


def validate(config: ml_collections.ConfigDict) -> list[str]:
  sde_config, problems = config.sde, []
  if sde_config.type not in SDE_TYPES:
    problems.append(f"Unknown sde.type {sde_config.type!r}; valid: {', '.join(SDE_TYPES)}.")
  if sde_config.conditioning not in sde.NOISE_CONDITIONINGS:
    problems.append(
      f"Unknown sde.conditioning {sde_config.conditioning!r}; valid: "
      f"{', '.join(sde.NOISE_CONDITIONINGS)}."
    )
  if sde_config.type in ("vp", "subvp") and sde_config.num_scales <= sde_config.beta_max:
    problems.append(
      f"sde.num_scales={sde_config.num_scales} must exceed sde.beta_max={sde_config.beta_max}: "
      "the discrete βs β(t)/N must stay below 1."
    )
  if config.model.get("num_classes"):
    problems.append(
      "config.family='score_sde' trains an unconditional ε-model: model.num_classes must be 0."
    )
  if sde_config.conditioning == "sigma" and config.model.embedding_type != "fourier":
    problems.append(
      "sde.conditioning='sigma' feeds the network log σ ∈ [log σ_min, log σ_max], a range the "
      "sinusoidal embedding barely resolves: set model.embedding_type='fourier' (NCSN++)."
    )
  problems += base.unet_problems(
    config, config.data.num_channels, f"{config.data.num_channels} data channels predicted as ε"
  )
  return problems + base.no_guidance_problems(config) + base.no_context_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  score_sde = make_sde(config.sde)
  model = models.get_model(config.model)
  conditioning = config.sde.conditioning

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    t = jax.random.uniform(keys.t, (x0.shape[0],), minval=config.sde.eps, maxval=score_sde.T)
    return {
      "t": t,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t / score_sde.T,
      "eps": jax.random.normal(keys.noise, x0.shape, x0.dtype),
    }

  def score_fn(params, **apply_kwargs):
    return sde.model_score_fn(
      score_sde, lambda x_t, t: model.apply(params, x_t, t, **apply_kwargs), conditioning
    )

  def loss(params, batch, draws, dropout_rng):
    return sde.dsm_loss(
      score_sde,
      score_fn(params, **base.apply_kwargs(dropout_rng)),
      batch["image"],
      draws["t"],
      draws["eps"],
      config.sde.likelihood_weighting,
    )

  def make_sampler(
    batch_size: int, progress: bool = False, guide=None, workdir=None
  ) -> base.SampleFn:
    del guide, workdir
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)

    sampling_config = config.sampling
    # EDM's grid over the SDE's σ(t), t in [eps, 1] (concrete: here, not in the traced sampler)
    sigma_range = [float(sde.sigma_of_t(score_sde, t)) for t in (config.sde.eps, score_sde.T)]

    def sample(params, rng, labels, guide_params=None, controls=None):
      del labels, guide_params, controls
      if sampling_config.sampler not in sampling.SIGMA_SOLVERS:
        return sde.pc_sample(score_sde, score_fn(params), rng, shape, snr=sampling_config.snr)
      denoise_fn = sde.sigma_denoiser(score_sde, score_fn(params))
      return gaussian.sigma_space_sample(
        denoise_fn, rng, shape, *sigma_range, sampling_config, progress
      )

    return sample

  def bits_per_dim(params, x0, rng, labels=None):
    del labels  # unconditional (validate refuses model.num_classes)
    # The probability-flow ODE's likelihood of the dequantised 8-bit data (Hutchinson's trace
    # estimate).
    images = jnp.round((x0 + 1.0) * 127.5).astype(jnp.uint8)
    return {"bpd": sde.bits_per_dim(score_sde, score_fn(params), images, rng)}

  return base.Family(
    name="score_sde",
    model=model,
    init_params=lambda rng: model.init(rng, *base.dummy_inputs(config.data)),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    bits_per_dim=bits_per_dim,
  )
