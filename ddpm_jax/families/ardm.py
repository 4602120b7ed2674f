"""Order-agnostic Autoregressive Diffusion Models (Hoogeboom et al. 2021) on the 8-bit (or
binarised) pixel values: the U-Net sees the known values and their mask and predicts K logits per
unknown sub-pixel; trained on the unbiased one-step estimate of -log p(x), sampled in a random order
in D or fewer parallel steps, evaluated by the exact -log p(x | σ) along one random order.
ardm.upscale_bits = k > 0: the upscale ARDM (ARDM §4), k bits per stage, most significant first,
each stage also seeing the coarser values."""

from __future__ import annotations

import math
import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import ardm, losses, models
from ddpm_jax.families import base
from ddpm_jax.runtime import files


def values(num_classes: int, images: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> ARDM's integers in {0, …, K-1} (K = 256: the 8-bit values; K = 2:
  binarised)."""
  return jnp.clip(jnp.round((images + 1.0) * 0.5 * (num_classes - 1)), 0, num_classes - 1).astype(
    jnp.int32
  )


def images(num_classes: int, values_: jax.Array) -> jax.Array:
  return values_.astype(jnp.float32) / (num_classes - 1) * 2.0 - 1.0


def loss_components_path(workdir: str) -> str:
  """Where --mode=eval stores the per-step losses from which sampling plans parallel decoding."""
  return os.path.join(workdir, "ardm_loss_components.npz")


def decoding_plans(
  config: ml_collections.ConfigDict, workdir: str | None, stages: int = 1
) -> list[np.ndarray | None]:
  """Each stage's decoding plan for sampling.num_steps = S below D steps (per stage): the step
  boundaries by dynamic programming over the loss components that --mode=eval saved in workdir
  (or, without them, S steps of equal size). None: D steps."""
  num_dims = config.data.image_size**2 * config.data.num_channels
  budget = config.sampling.num_steps or num_dims
  if budget >= num_dims:
    return [None] * stages
  path = loss_components_path(workdir) if workdir else None
  if path and epath.Path(path).exists():
    components = files.load_npz(path)["loss_components"].reshape(-1, num_dims)
    if len(components) == stages:
      return [ardm.parallel_decoding_plan(c, budget) for c in components]
    logging.warning("%s holds %d stages' loss components, not %d.", path, len(components), stages)
  logging.warning(
    "No ARDM loss components at %s (run --mode=eval first): decoding in %d equal steps.",
    path,
    budget,
  )
  return [np.linspace(0, num_dims, budget + 1).round().astype(np.int32)] * stages


def upscale_problems(ardm_config) -> list[str]:
  bits = ardm_config.upscale_bits
  if not bits:
    return []
  num_bits = math.log2(ardm_config.num_classes)
  if num_bits != int(num_bits) or int(num_bits) % bits or bits >= num_bits:
    return [
      f"ardm.upscale_bits={bits} must divide log2(ardm.num_classes={ardm_config.num_classes}) "
      "into two or more stages (e.g. 1, 2 or 4 of 8 bits)."
    ]
  return []


# sampling.sampler: the variables decoded in a random order, sampling.num_steps at a time
SAMPLERS = ("autoregressive",)
# shared fields whose default differs for this family: 256 logits for the digits' one channel
SHARED_DEFAULTS = {"model.out_channels": 256, "sampling.sampler": "autoregressive"}


def default_config() -> ml_collections.ConfigDict:
  """config.ardm: the variables' values and the upscale stages."""
  ardm_config = ml_collections.ConfigDict()
  # K values per sub-pixel: 256 (8-bit) or 2 (binarised at 0); model.out_channels must be
  # num_channels · num_classes
  ardm_config.num_classes = 256
  # > 0: an upscale ARDM (ARDM §4) of this many bits per stage, most significant first
  # (model.out_channels = num_channels · 2^upscale_bits)
  ardm_config.upscale_bits = 0
  return ardm_config


# the config blocks this family reads, each with its defaults
CONFIG_BLOCKS = {"ardm": default_config}


# config.ardm's numeric ranges (config_validation.RANGES' form)
RANGES = {"ardm.upscale_bits": (0, True, None, False), "ardm.num_classes": (2, True, None, False)}


def validate(config: ml_collections.ConfigDict) -> list[str]:
  num_classes, problems = config.ardm.num_classes, []
  if config.model.get("num_classes"):
    problems.append(
      f"config.family='ardm' trains an unconditional network (it takes no labels): "
      f"model.num_classes={config.model.num_classes} must be 0."
    )
  if not 2 <= num_classes <= 256:
    problems.append(f"ardm.num_classes={num_classes} must be in [2, 256] (values of 8-bit images).")
    return problems
  if config.sampling.sampler not in SAMPLERS:
    problems.append(
      f"config.family='ardm' samples with sampling.sampler in {', '.join(SAMPLERS)}; got "
      f"{config.sampling.sampler!r}."
    )
  problems += upscale_problems(config.ardm)
  if problems:
    return problems
  bits = config.ardm.upscale_bits
  why = f"ardm.upscale_bits={bits}" + ("" if bits else f" and ardm.num_classes={num_classes}")
  problems += base.unet_problems(
    config,
    config.data.num_channels * (2**bits if bits else num_classes),
    f"{config.data.num_channels} data channels with {why}",
  )
  return problems + base.no_guidance_problems(config) + base.no_context_problems(config)


def build(config: ml_collections.ConfigDict) -> base.Family:
  if config.ardm.upscale_bits:
    return build_upscale(config)
  num_classes = config.ardm.num_classes
  model = models.get_model(config.model)

  def logits_fn(params, **apply_kwargs) -> ardm.LogitsFn:
    """The U-Net as ARDM's network: input [the known values in [-1, 1] (0 where unknown), the known
    mask] (2·C channels), conditioned on t, the number known; output C·K channels -> logits [B, H,
    W, C, K]."""

    def logits(x, known, t):
      inputs = jnp.concatenate(
        [jnp.where(known, images(num_classes, x), 0.0), known.astype(jnp.float32)], axis=-1
      )
      return model.apply(params, inputs, t, **apply_kwargs).reshape(x.shape + (num_classes,))

    return logits

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    t, rank = ardm.random_step(keys.t, keys.noise, x0.shape)  # t known variables, in a random order
    return {
      "t": t,
      "rank": rank,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": t / math.prod(x0.shape[1:]),
    }

  # the unbiased one-step estimate of -log p(x), bits/dim
  def loss(params, batch, draws, dropout_rng):
    x0 = batch["image"]
    nats = ardm.loss_at(
      logits_fn(params, **base.apply_kwargs(dropout_rng)),
      values(num_classes, x0),
      draws["t"],
      draws["rank"],
    )
    return losses.bits_per_dim(nats, x0)

  def make_sampler(
    batch_size: int, progress: bool = False, guide=None, workdir=None
  ) -> base.SampleFn:
    del progress, guide
    shape = base.sample_shape(batch_size, config.data)
    (plan,) = decoding_plans(config, workdir)

    def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
      del cond, guide_params, controls
      base.no_initial_noise(x_T, "ARDM decoding")
      sampled, _ = ardm.sample(logits_fn(params), rng, shape, plan)
      return images(num_classes, sampled)

    return sample

  # exact -log p(x | σ) along one random order: D network calls
  def bits_per_dim(params, x0, rng, cond=None):
    del cond  # the ARDM's network takes no conditioning
    nats, per_step = ardm.nll_along_order(
      logits_fn(params), values(num_classes, x0), ardm.random_order(rng, x0.shape)
    )
    return {"bpd": losses.bits_per_dim(nats, x0), "loss_components": per_step}

  return base.Family(
    name="ardm",
    model=model,
    init_params=lambda rng: model.init(
      rng, *base.dummy_inputs(config.data, 2 * config.data.num_channels)
    ),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    bits_per_dim=bits_per_dim,
    save_likelihood_terms=save_likelihood_terms,
    sampler_files=sampler_files,
  )


def sampler_files(workdir: str) -> tuple[str, ...]:
  """What the sampler reads from a workdir: the loss components its decoding plan comes from."""
  return (loss_components_path(workdir),)


def save_likelihood_terms(workdir: str, terms) -> None:
  """The mean per-step losses ([D], an upscale ARDM's [S, D]) for parallel decoding."""
  path = loss_components_path(workdir)
  files.save_npz(path, loss_components=terms["loss_components"].mean(axis=0))
  logging.info("Wrote the ARDM loss components (nats per step) to %s.", path)


def build_upscale(config: ml_collections.ConfigDict) -> base.Family:
  """The upscale ARDM (ARDM §4): ardm.upscale_bits = k bits per stage, most significant first."""
  bits, num_bits = config.ardm.upscale_bits, int(math.log2(config.ardm.num_classes))
  stages, digit_classes = ardm.num_stages(num_bits, bits), 2**bits
  model = models.get_model(config.model)
  shape_of = lambda batch_size: (
    batch_size,
    config.data.image_size,
    config.data.image_size,
    config.data.num_channels,
  )
  num_dims = math.prod(shape_of(1)[1:])

  def logits_fn(params, **apply_kwargs) -> ardm.UpscaleLogitsFn:
    """The U-Net as each stage's network: input [the known digits in [-1, 1] (0 where unknown), the
    known mask, the coarse values x^(s) at the middle of their range in [-1, 1]] (3·C channels),
    conditioned on s·D + t; output C·2^k channels -> logits [B, H, W, C, 2^k]."""

    def logits(d, known, t, coarse, stage):
      shift = num_bits - bits * losses.expand_to(stage, coarse)  # bits still unknown in x^(s)
      middle = (coarse.astype(jnp.float32) + 0.5) * 2.0**shift - 0.5
      inputs = jnp.concatenate(
        [
          jnp.where(known, images(digit_classes, d), 0.0),
          known.astype(jnp.float32),
          middle / (2**num_bits - 1) * 2.0 - 1.0,
        ],
        axis=-1,
      )
      out = model.apply(params, inputs, stage * num_dims + t, **apply_kwargs)
      return out.reshape(d.shape + (digit_classes,))

    return logits

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    x0 = batch["image"]
    t, rank = ardm.random_step(keys.t, keys.noise, x0.shape)
    stage = jax.random.randint(keys.labels, (x0.shape[0],), 0, stages)
    return {
      "t": t,
      "rank": rank,
      "stage": stage,
      "weight": base.unweighted(x0.shape[0]),
      "t_fraction": (stage * num_dims + t) / (stages * num_dims),
    }

  # S · the drawn stage's one-step estimate: unbiased for -log p(x)'s bound, bits/dim
  def loss(params, batch, draws, dropout_rng):
    x0 = batch["image"]
    nats = ardm.upscale_loss_at(
      logits_fn(params, **base.apply_kwargs(dropout_rng)),
      values(2**num_bits, x0),
      draws["stage"],
      draws["t"],
      draws["rank"],
      bits,
      num_bits,
    )
    return losses.bits_per_dim(nats, x0)

  def make_sampler(
    batch_size: int, progress: bool = False, guide=None, workdir=None
  ) -> base.SampleFn:
    del progress, guide
    plans = decoding_plans(config, workdir, stages)

    def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
      del cond, guide_params, controls
      base.no_initial_noise(x_T, "ARDM decoding")
      x = ardm.upscale_sample(logits_fn(params), rng, shape_of(batch_size), bits, num_bits, plans)
      return images(2**num_bits, x)

    return sample

  # exact -log p(x | σ_0, …, σ_{S-1}) along one random order per stage: S · D network calls
  def bits_per_dim(params, x0, rng, cond=None):
    del cond
    ranks = jax.vmap(lambda key: ardm.random_order(key, x0.shape))(jax.random.split(rng, stages))
    nats, per_step = ardm.upscale_nll_along_orders(
      logits_fn(params), values(2**num_bits, x0), ranks, bits, num_bits
    )
    return {"bpd": losses.bits_per_dim(nats, x0), "loss_components": per_step.transpose(1, 0, 2)}

  return base.Family(
    name="ardm",
    model=model,
    init_params=lambda rng: model.init(
      rng, *base.dummy_inputs(config.data, 3 * config.data.num_channels)
    ),
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    bits_per_dim=bits_per_dim,
    save_likelihood_terms=save_likelihood_terms,
    sampler_files=sampler_files,
  )
