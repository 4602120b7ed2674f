"""ADM's noisy classifier (Dhariwal & Nichol 2021, §4): cross-entropy of p(y | x_t) at uniform t on
the Gaussian diffusion of config.diffusion; the Gaussian family's samplers use it for classifier
guidance. It generates no images and has no likelihood."""

from __future__ import annotations

import ml_collections
import optax

from ddpm_jax import diffusion, models
from ddpm_jax.families import base, gaussian

# the config blocks this family reads (its noise process: the Gaussian diffusion), with defaults
CONFIG_BLOCKS = {"diffusion": gaussian.diffusion_config}
SAMPLERS = ()  # it guides the Gaussian family's samplers; it samples nothing itself


def validate(config: ml_collections.ConfigDict) -> list[str]:
  problems = gaussian.diffusion_problems(config.diffusion) + base.image_data_problems(config)
  if config.diffusion.rescale_timesteps:
    problems.append(
      "diffusion.rescale_timesteps=True scales the t a Gaussian diffusion model sees; a noisy "
      "classifier is trained on t (as guided-diffusion's classifier_train.py trains it)."
    )
  if config.model.get("name") != "classifier":
    problems.append(
      "config.family='classifier' trains the noisy classifier: set model.name='classifier'."
    )
  if not config.model.get("num_classes"):
    problems.append(
      "config.family='classifier' needs model.num_classes > 0 (the labels it predicts)."
    )
  if config.diffusion.timestep_sampler != "uniform":
    problems.append(
      "config.family='classifier' draws t uniformly: diffusion.timestep_sampler must be 'uniform'."
    )
  return problems + base.no_context_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  noise_process = gaussian.make_diffusion(config)
  model = models.get_model(config.model)

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    return gaussian.timestep_draws(keys, batch["image"], noise_process.num_timesteps)

  def loss(params, batch, draws, dropout_rng):
    x_t = diffusion.q_sample(noise_process, batch["image"], draws["t"], draws["eps"])
    logits = model.apply(
      params, x_t, noise_process.timestep_map[draws["t"]], **base.apply_kwargs(dropout_rng)
    )
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

  return base.Family(
    name="classifier",
    model=model,
    init_params=lambda rng: model.init(rng, *base.dummy_inputs(config.data)),
    draw=draw,
    loss=loss,
  )
