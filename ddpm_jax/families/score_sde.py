"""Score SDEs (Song et al. 2021): VP, subVP and VE SDEs trained by continuous-time denoising score
matching with an ε-predicting U-Net, sampled by predictor-corrector (config.sampling's predictor,
corrector, snr, n_corrector and num_steps), the probability-flow ODE, NCSN's annealed Langevin
dynamics or the σ-space solvers; likelihood by the probability-flow ODE."""

from __future__ import annotations

import jax
import ml_collections

from ddpm_jax import models, sampling, sde
from ddpm_jax.families import base, gaussian, latent

SDE_TYPES = ("vp", "subvp", "ve")
# config.sampling.sampler: predictor-corrector, the probability-flow ODE (adaptive Tsit5), NCSN's
# annealed Langevin dynamics (VE), or a σ-space solver on the SDE's σ(t)
SAMPLERS = ("pc", "ode", "annealed_langevin", *sampling.SIGMA_SOLVERS)
# the samplers on a fixed grid of noise levels (a sampling.Trajectory: they also edit)
TRAJECTORIES = ("pc", *sampling.SIGMA_SOLVERS)


def sampling_sde(score_sde, sampling_config):
  """The SDE discretised on sampling.num_steps steps (None: sde.num_scales) for PC and annealed
  Langevin sampling."""
  return score_sde.replace(N=sampling_config.num_steps) if sampling_config.num_steps else score_sde


def sampling_problems(config: ml_collections.ConfigDict) -> list[str]:
  sampling_config, problems = config.sampling, []
  sampler = sampling_config.sampler
  if sampler not in SAMPLERS:
    return [
      f"config.family='score_sde' samples with sampling.sampler in {', '.join(SAMPLERS)}; got "
      f"{sampler!r}."
    ]
  for field, choices in (("predictor", sde.PREDICTORS), ("corrector", sde.CORRECTORS)):
    if sampling_config[field] not in choices:
      problems.append(
        f"Unknown sampling.{field} {sampling_config[field]!r}; valid: {', '.join(choices)}."
      )
  if problems:
    return problems
  if sampler == "pc" and sampling_config.predictor == sampling_config.corrector == "none":
    problems.append("sampling.predictor and sampling.corrector are both 'none': nothing samples.")
  if sampler == "pc" and sampling_config.predictor == "ancestral" and config.sde.type == "subvp":
    problems.append("sampling.predictor='ancestral' is defined for the VP and VE SDEs, not sub-VP.")
  if sampler == "annealed_langevin" and config.sde.type != "ve":
    problems.append(
      f"sampling.sampler='annealed_langevin' (NCSN) runs on the VE SDE's σs, not "
      f"sde.type={config.sde.type!r}."
    )
  steps = sampling_config.num_steps
  if (
    sampler == "pc"
    and steps
    and config.sde.type in ("vp", "subvp")
    and steps <= config.sde.beta_max
  ):
    problems.append(
      f"sampling.num_steps={steps} must exceed sde.beta_max={config.sde.beta_max}: predictor-"
      "corrector sampling's discrete βs β(t)/N must stay below 1."
    )
  for field in ("snr", "step_lr", "ode_tolerance"):
    if not sampling_config[field] > 0:
      problems.append(f"sampling.{field}={sampling_config[field]} must be positive.")
  if sampling_config.n_corrector < 1:
    problems.append(f"sampling.n_corrector={sampling_config.n_corrector} must be at least 1.")
  return problems


def make_sde(sde_config: ml_collections.ConfigDict):
  """The SDE of `sde_config.type`."""
  if sde_config.type == "ve":
    return sde.VESDE(sde_config.sigma_min, sde_config.sigma_max, N=sde_config.num_scales)
  sde_class = {"vp": sde.VPSDE, "subvp": sde.subVPSDE}[sde_config.type]
  return sde_class(sde_config.beta_min, sde_config.beta_max, N=sde_config.num_scales)


# shared fields whose default differs for this family: predictor-corrector sampling
SHARED_DEFAULTS = {"sampling.sampler": "pc"}


def default_config() -> ml_collections.ConfigDict:
  """config.sde: the SDE (Song et al. 2021) and its training."""
  sde = ml_collections.ConfigDict()
  sde.type = "vp"  # "vp" | "subvp" | "ve"
  sde.beta_min, sde.beta_max = 0.1, 20.0
  sde.sigma_min, sde.sigma_max = 0.01, 50.0
  sde.num_scales = 1000
  sde.conditioning = "t"  # the network's input: "t" (t·(N-1)) or "sigma" (log σ; NCSN++)
  sde.eps = 1e-5  # t ~ U(eps, 1) in training
  sde.likelihood_weighting = False
  return sde


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"sde": default_config}


# config.sde's numeric ranges (config_validation.RANGES' form: lowest, included, highest, included)
RANGES = {
  "sde.num_scales": (1, True, None, False),
  "sde.beta_min": (0, True, None, False),
  **dict.fromkeys(["sde.beta_max", "sde.sigma_max", "sde.sigma_min"], (0, False, None, False)),
  "sde.eps": (0, False, 1, False),
}


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
  if sde_config.conditioning == "sigma" and config.model.embedding_type != "fourier":
    problems.append(
      "sde.conditioning='sigma' feeds the network log σ ∈ [log σ_min, log σ_max], a range the "
      "sinusoidal embedding barely resolves: set model.embedding_type='fourier' (NCSN++)."
    )
  problems += base.unet_problems(
    config,
    config.data.num_channels,
    f"{config.data.num_channels} data channels predicted as ε",
    networks=base.IMAGE_NETWORKS,
  )
  problems += sampling_problems(config)
  return problems + base.no_guidance_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  score_sde = make_sde(config.sde)
  model = models.get_model(config.model)
  conditioning = config.sde.conditioning
  contexts = gaussian.cross_attention(config)  # cross-attention contexts, where model.context_dim
  continuous_data = latent.latent_workdir(config) is not None

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    t = jax.random.uniform(keys.t, (x0.shape[0],), minval=config.sde.eps, maxval=score_sde.T)
    return {
      "t": t,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t / score_sde.T,
      "eps": jax.random.normal(keys.noise, x0.shape, x0.dtype),
      "labels": base.conditioning_labels(
        keys.labels, batch, config.model, config.training.label_dropout
      ),
      "context": contexts.of_batch(keys, batch),
    }

  sampling_config = config.sampling

  def score_fn(params, cond=None, **apply_kwargs):
    """The score of the network given `cond`'s labels and contexts (None: unconditional, or the
    null label / zero context)."""
    cond = cond or base.Cond()
    network = lambda x_t, t: model.apply(params, x_t, t, cond.label, cond.context, **apply_kwargs)
    return sde.model_score_fn(score_sde, network, conditioning)

  def sampling_score(params, cond, controls):
    """`score_fn`, guided without a classifier where sampling.guidance_scale is on: the score of
    (1 + w) out(x, c) - w out(x, ∅), the output (ε-like) being linear in the score
    (`gaussian.free_guidance`, with sampling.guidance_rescale)."""
    scale = {"guidance_scale": sampling_config.guidance_scale, **(controls or {})}
    network = gaussian.free_guidance(
      lambda y, conditions: lambda x_t, t: model.apply(params, x_t, t, y, conditions["context"]),
      cond or base.Cond(),
      (contexts,),
      sampling_config,
      scale["guidance_scale"],
      config.data.num_channels,
    )
    return sde.model_score_fn(score_sde, network, conditioning)

  def loss(params, batch, draws, dropout_rng):
    return sde.dsm_loss(
      score_sde,
      score_fn(
        params, base.Cond(draws["labels"], draws["context"]), **base.apply_kwargs(dropout_rng)
      ),
      batch["image"],
      draws["t"],
      draws["eps"],
      config.sde.likelihood_weighting,
    )

  sampler_sde = sampling_sde(score_sde, sampling_config)
  # EDM's grid over the SDE's σ(t), t in [eps, 1] (concrete: evaluated outside the traced
  # sampler, by make_sampler / make_trajectory)
  sigma_range = lambda: [float(sde.sigma_of_t(score_sde, t)) for t in (config.sde.eps, score_sde.T)]
  pc_options = lambda: dict(
    predictor=sampling_config.predictor,
    corrector=sampling_config.corrector,
    snr=sampling_config.snr,
    n_corrector=sampling_config.n_corrector,
  )

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide
    if sampling_config.sampler not in TRAJECTORIES:
      raise ValueError(
        f"Editing runs on the samplers {', '.join(TRAJECTORIES)}, not sampling.sampler="
        f"{sampling_config.sampler!r} (a sampler without a fixed grid of noise levels): set "
        "--config.sampling.sampler (for the probability-flow ODE: heun, the same ODE on a grid)."
      )
    sigma_ends = sigma_range()

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params
      score = sampling_score(params, cond, controls)
      if sampling_config.sampler == "pc":
        return sde.pc_trajectory(sampler_sde, score, **pc_options())
      denoise_fn = sde.sigma_denoiser(score_sde, score)
      return gaussian.sigma_space_trajectory(denoise_fn, *sigma_ends, sampling_config)

    return trajectory

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    del guide, workdir
    shape = base.sample_shape(batch_size, config.data)
    if sampling_config.sampler in TRAJECTORIES:
      return base.trajectory_sampler(make_trajectory(), shape, progress)

    def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
      del guide_params
      score = sampling_score(params, cond, controls)
      if sampling_config.sampler == "ode":  # x_T: the prior's draw z
        tolerance = sampling_config.ode_tolerance
        return sde.ode_sample(score_sde, score, rng, shape, x_T, tolerance, tolerance)[0]
      base.no_initial_noise(x_T, "NCSN's annealed Langevin dynamics")
      # annealed Langevin dynamics: NCSN's σ levels, largest first, the score given σ
      levels = sampler_sde.discrete_sigmas[::-1]
      score_of_sigma = lambda x, sigma: score(x, sde.t_of_sigma(score_sde, sigma))
      return sde.annealed_langevin_sample(
        levels, score_of_sigma, rng, shape, sampling_config.n_corrector, sampling_config.step_lr
      )

    return sample

  def make_latent_codec(num_steps: int):
    """The probability-flow ODE in σ(t) (`sde.sigma_denoiser`) by Heun on EDM's grid between
    σ(sde.eps) and σ(1) (`gaussian.sigma_ode_latent_codec`)."""
    denoiser = lambda params, cond: sde.sigma_denoiser(
      score_sde, sampling_score(params, cond, None)
    )
    return gaussian.sigma_ode_latent_codec(denoiser, sampling_config, num_steps, *sigma_range())

  def bits_per_dim(params, x0, rng, cond=None):
    # The probability-flow ODE's likelihood (Hutchinson's trace estimate) of the dequantised 8-bit
    # data or of latents, given the labels of a class-conditional model (unguided).
    score = score_fn(params, cond)
    log_likelihood = lambda y, key: sde.ode_log_likelihood(score_sde, score, y, key)
    return {"bpd": sde.data_bits_per_dim(log_likelihood, x0, rng, continuous_data)}

  return base.Family(
    name="score_sde",
    model=model,
    init_params=lambda rng: contexts.init(model, rng, config.data),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    make_trajectory=make_trajectory,
    make_latent_codec=make_latent_codec,
    sample_controls=("guidance_scale",),
    conditions=gaussian.label_and_contexts(config, contexts),
    bits_per_dim=bits_per_dim,
  )
