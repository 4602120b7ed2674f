"""Diffusion-based representation learning (Abstreiter et al. 2021; the diffusion autoencoder of
Preechakul et al. 2022): an encoder E_φ(x0) -> z ∈ R^d (model.latent_dim) trained jointly with a
denoiser ε_θ(x_t, t, z) of the Gaussian diffusion of config.diffusion, by that diffusion's loss.
z is projected and added to the time embedding, so it reaches every residual block (AdaGN with
model.scale_shift_norm, as Preechakul et al.). The encoder is the U-Net's encoder half with
attention pooling (the noisy classifier's architecture, `models.NoisyClassifier`) seeing x0 at
t = 0; its widths and depth are config.representation's.

Given z, every sampler of the Gaussian family decodes (sampling.sampler); DDIM's ODE given z is the
deterministic encoder x0 -> x_T of the reconstruction (`make_latent_codec`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import diffusion, models
from ddpm_jax.families import base, gaussian

SAMPLERS = gaussian.SAMPLERS  # decoding z: the Gaussian family's
# z enters through the time embedding: AdaGN keeps it at every width (with 32 channels in 32
# groups, a GroupNorm after an added embedding erases it; validate)
SHARED_DEFAULTS = {"model.latent_dim": 32, "model.scale_shift_norm": True}
# the traced sampling values (DDIM's η): z always conditions, so there is no guidance scale
CONTROLS = ("eta",)


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # the encoder E_φ: the U-Net's encoder half of these widths, then attention pooling to latent_dim
  config.encoder_ch = 32
  config.encoder_ch_mult = (1, 2)
  config.encoder_num_res_blocks = 1
  # --mode=eval: the probes' inverse L2 strength (scikit-learn's C) on standardised features, and
  # how many held-out images the reconstruction and the semantic consistency decode
  config.probe_c = 1.0
  config.num_eval_images = 128
  config.eval_num_steps = 20  # DDIM steps of the inversion x0 -> x_T and of each decoding
  config.split = "train"  # --mode=represent: the split whose codes it writes
  # --mode=interpolate also moves the two images' codes along a linear probe's normal for this
  # class (fitted on the codes of the train split's first num_probe_images), by each scale (in
  # standardised code norms, evaluation/representation.probe_direction); None: no manipulation
  config.manipulate_class = ml_collections.config_dict.placeholder(int)
  config.manipulate_scales = (0.0, 0.25, 0.5, 0.75, 1.0)
  config.num_probe_images = 10000
  return config


CONFIG_BLOCKS = {"diffusion": gaussian.diffusion_config, "representation": default_config}
RANGES = {
  **dict.fromkeys(
    [
      "representation.encoder_ch",
      "representation.encoder_num_res_blocks",
      "representation.num_eval_images",
      "representation.eval_num_steps",
      "representation.num_probe_images",
      "model.latent_dim",
    ],
    (1, True, None, False),
  ),
  "representation.probe_c": (0, False, None, False),
  "representation.manipulate_class": (0, True, None, False),
}


def denoiser_config(model_config: ml_collections.ConfigDict) -> dict:
  """The U-Net's hyperparameters: config.model with latent_dim as its embedding width."""
  kwargs = dict(model_config)
  kwargs["embedding_dim"] = kwargs.pop("latent_dim")
  return kwargs


def make_encoder(config: ml_collections.ConfigDict) -> models.NoisyClassifier:
  options = config.representation
  return models.NoisyClassifier(
    ch=options.encoder_ch,
    ch_mult=tuple(options.encoder_ch_mult),
    num_res_blocks=options.encoder_num_res_blocks,
    attn_resolutions=(),
    num_classes=config.model.latent_dim,
    num_head_channels=32,
  )


def validate(config: ml_collections.ConfigDict) -> list[str]:
  # the denoiser's: the Gaussian family's diffusion, samplers and U-Net checks
  problems = gaussian.validate(config, embeddings=False, networks=("unet",))
  problems += base.no_context_problems(config)
  options = config.representation
  widths = {options.encoder_ch * m for m in options.encoder_ch_mult}
  if any(w % 32 for w in widths):
    problems.append(
      f"Every encoder width representation.encoder_ch·encoder_ch_mult must be divisible by 32 "
      f"(GroupNorm(32) groups); got {sorted(widths)}."
    )
  if not config.model.scale_shift_norm and config.model.ch * config.model.ch_mult[0] <= 32:
    problems.append(
      f"model.scale_shift_norm=False with {config.model.ch * config.model.ch_mult[0]} channels in "
      "32 GroupNorm groups: the code z, added to each channel before a norm of one channel per "
      "group, is normalised away; set model.scale_shift_norm=True (AdaGN, as Preechakul et al.)."
    )
  refused = {
    "model.num_classes": config.model.get("num_classes"),
    "diffusion.rescale_timesteps": config.diffusion.rescale_timesteps,
    "sampling.guidance_scale": config.sampling.guidance_scale,
    "sampling.classifier_scale": config.sampling.classifier_scale,
  }
  problems += [
    f"{field}={value}: config.family='representation' conditions the denoiser on the code z "
    "alone (no labels, no guidance, the network sees t)."
    for field, value in refused.items()
    if value
  ]
  return problems


def build(config: ml_collections.ConfigDict) -> base.Family:
  gaussian_diffusion = gaussian.make_diffusion(config)
  encoder = make_encoder(config)
  denoiser = models.get_model(denoiser_config(config.model))
  sampling_config, latent_dim = config.sampling, config.model.latent_dim

  def represent(params, x0):
    """z = E_φ(x0) [B, latent_dim] of images x0 [B, H, W, C] in [-1, 1]."""
    return encoder.apply(params["encoder"], x0, jnp.zeros(x0.shape[:1], jnp.int32))

  def model_fn(params, z, **kwargs):
    """ε_θ(·, ·, z): the denoiser given codes z [B, latent_dim]."""
    return lambda x_t, t: denoiser.apply(params["denoiser"], x_t, t, embedding=z, **kwargs)

  def codes(params, cond, x0=None):
    """The codes of `cond` (Cond.embedding), else those of x0."""
    if cond is not None and cond.embedding is not None:
      return cond.embedding
    if x0 is None:
      raise ValueError(
        "config.family='representation' decodes codes z: pass Cond(embedding=z) (z = "
        "family.represent(params, images))."
      )
    return represent(params, x0)

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    return gaussian.timestep_draws(keys, batch["image"], gaussian_diffusion.num_timesteps)

  def loss(params, batch, draws, dropout_rng):
    x0 = batch["image"]
    fn = model_fn(params, represent(params, x0), **base.apply_kwargs(dropout_rng))
    return diffusion.training_losses(gaussian_diffusion, fn, x0, draws["t"], draws["eps"])["loss"]

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide  # refused by validate

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params
      controls = {**{name: sampling_config[name] for name in CONTROLS}, **(controls or {})}
      fn = model_fn(params, codes(params, cond))
      return gaussian.configured_trajectory(gaussian_diffusion, fn, controls, sampling_config)

    return trajectory

  def make_latent_codec(num_steps: int):
    """DDIM's ODE (η = 0) given z on `num_steps` steps (`gaussian.ddim_latent_codec`); z is
    cond.embedding, else E_φ(x0) when encoding."""
    model = lambda params, cond, x0: model_fn(params, codes(params, cond, x0))
    return gaussian.ddim_latent_codec(gaussian_diffusion, model, sampling_config, num_steps)

  def bits_per_dim(params, x0, rng, cond=None):
    fn = model_fn(params, codes(params, cond, x0))
    return {"bpd": diffusion.calc_bpd_loop(gaussian_diffusion, fn, x0, rng)["total_bpd"]}

  def init_params(rng):
    encoder_rng, denoiser_rng = jax.random.split(rng)
    x, t = base.dummy_inputs(config.data)
    return {
      "encoder": encoder.init(encoder_rng, x, t),
      "denoiser": denoiser.init(denoiser_rng, x, t, embedding=jnp.zeros((1, latent_dim))),
    }

  return base.Family(
    name="representation",
    model=denoiser,
    init_params=init_params,
    draw=draw,
    loss=loss,
    make_sampler=base.make_trajectory_sampler(make_trajectory, config.data),
    make_trajectory=make_trajectory,
    make_latent_codec=make_latent_codec,
    sample_controls=CONTROLS,
    conditions=("embedding",),
    bits_per_dim=bits_per_dim,
    represent=represent,
  )
