"""The interface every model family implements, and the pieces several families share.

A family module (gaussian.py, classifier.py, score_sde.py, vdm.py, ardm.py) has two functions:

  validate(config) -> list[str]     its own config problems (none: the config is valid for it)
  build(config) -> Family           what the train loop, --mode=sample and --mode=eval call

and nothing else is looked up by family name.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import sampling

Array = jax.Array
Params = Any
# {"image": [B, H, W, C] in [-1, 1], "label": [B] int, and where the data has them "context"
# [B, L, D], "embedding" [B, D]}
Batch = dict[str, Array]
# per-example random draws, every leaf [B, ...]; "weight" and "t_fraction" [B]
Draws = dict[str, Any]


class Cond(NamedTuple):
  """What a batch is conditioned on, one pytree for every family's sampler, trajectory and
  likelihood (None: absent). A family uses the fields in its `Family.conditions` and its `validate`
  refuses a config that would need others."""

  label: Array | None = None  # [B] int class labels
  context: Array | None = None  # [B, L, D] cross-attention contexts
  low_res: Array | None = None  # [B, s, s, C] in [-1, 1]: what a super-resolution model upsamples
  embedding: Array | None = None  # [B, D] an embedding the denoiser is conditioned on


CONDITIONS = Cond._fields


class SampleFn(Protocol):
  """x [B, H, W, C] from the prior (or from the initial noise `x_T` [B, H, W, C], where the
  sampler starts from Gaussian noise); `controls`: the family's traced sampling values
  (`Family.sample_controls`: the guidance scales, DDIM's η), so that changing them does not compile
  the sampler again; `guide_params`: a noisy classifier's, for classifier guidance."""

  def __call__(
    self,
    params: Params,
    rng: Array,
    cond: Cond | None,
    guide_params=None,
    controls=None,
    x_T: Array | None = None,
  ) -> Array: ...


class TrajectoryFn(Protocol):
  """The family's configured sampler as a `sampling.Trajectory` (noise levels and a step)."""

  def __call__(
    self, params: Params, cond: Cond | None = None, guide_params=None, controls=None
  ) -> sampling.Trajectory: ...


class BitsPerDimFn(Protocol):
  """{"bpd": [B], …}: the family's likelihood (bound) of 8-bit data x0 [B, H, W, C] in bits/dim,
  given its true conditioning, and any per-example terms it keeps."""

  def __call__(
    self, params: Params, x0: Array, rng: Array, cond: Cond | None = None
  ) -> dict[str, Array]: ...


class StepKeys(NamedTuple):
  """The random streams of one train step, from `step_keys`."""

  t: Array
  noise: Array
  dropout: Array
  labels: Array


def step_keys(rng: Array) -> StepKeys:
  """The step's key (already folded with the step) split into its four streams, in this fixed order
  so that a run's draws stay the same across code versions."""
  return StepKeys(*jax.random.split(rng, 4))


def unweighted(batch_size: int) -> Array:
  """The importance weights of families that draw t from the distribution they train on."""
  return jnp.ones((batch_size,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Family:
  """One kind of model, behind the calls the train step, the sampler and the evaluation need.

  init_params(rng) -> params
  draw(keys, batch, family_state) -> draws: all random draws of the loss at the global batch
      shape, so that results do not depend on the device count or on gradient accumulation (which
      splits draws along their first axis); "weight" [B] multiplies the per-example loss,
      "t_fraction" [B] in [0, 1] is the draw's noise level for the per-quartile loss logs.
  loss(params, batch, draws, dropout_rng) -> [B]: the per-example loss; dropout_rng None evaluates
      without dropout.
  make_sampler(batch_size, progress=False, guide=None, workdir=None) -> SampleFn, not jitted;
      None: the family does not generate images.
  make_trajectory(guide=None) -> TrajectoryFn: the configured sampler as a `sampling.Trajectory`,
      which samples (`trajectory_sampler`) and edits (inpainting, colorization, SDEdit); raises
      ValueError naming the sampler where it has no fixed grid; None: the family cannot edit.
  make_latent_codec(num_steps) -> (encode(params, x0, cond=None) -> x_T, decode(params, x_T,
      cond=None) -> x0): a deterministic map between images and latents (DDIM's ODE) for
      interpolation; None: none.
  sample_controls: the config.sampling fields its SampleFn also takes traced in `controls` (their
      defaults the config's), so that changing them does not compile the sampler again.
  conditions: the `Cond` fields its sampler, trajectory and likelihood use (the rest are ignored;
      `validate` refuses configs that would need them).
  bits_per_dim: a `BitsPerDimFn`; None: the family has no likelihood.
  save_likelihood_terms(workdir, terms): stores what bits_per_dim returned besides "bpd"
      (concatenated over the batches), for the family's sampler.
  init_state(params) / update_state(family_state, draws, per_example_loss): what the family
      carries across steps besides the parameters (the loss history of importance-sampled t; a
      distillation's teacher), given the initial parameters; None where nothing.
  advance(state) -> state: what the family changes in the train state after each update besides
      the EMA (progressive distillation: at a round's end the student becomes the teacher); None:
      nothing.
  clip_mask(params) -> bools: which gradients the clipping norm sees; None: all.
  represent(params, x0) -> z [B, D]: the family's learned representation of images x0 [B, H, W, C]
      in [-1, 1] (its sampler, trajectory and likelihood take z as `Cond.embedding`); None: none.
  samples: what its sampler draws: "images" [B, H, W, C] in [-1, 1], or "embeddings" [B, D] (the
      diffusion prior's).
  reconstruct(params, x0) -> (x̂0, z): an autoencoder's reconstruction of images x0 and their
      latents (`--mode=eval`'s reconstruction metrics); None: not an autoencoder.
  sampler_files(workdir) -> paths: the files in a run's workdir that its sampler reads (what they
      hold is part of the key of its saved program, runtime/executables.py).
  """

  name: str
  model: Any
  init_params: Callable[[Array], Params]
  draw: Callable[[StepKeys, Batch, Any], Draws]
  loss: Callable[[Params, Batch, Draws, Array | None], Array]
  make_sampler: Callable[..., SampleFn] | None = None
  make_trajectory: Callable[..., TrajectoryFn] | None = None
  make_latent_codec: Callable[[int], tuple[Callable, Callable]] | None = None
  sample_controls: tuple[str, ...] = ()
  conditions: tuple[str, ...] = ()
  bits_per_dim: BitsPerDimFn | None = None
  save_likelihood_terms: Callable[[str, dict[str, Any]], None] | None = None
  init_state: Callable[[Params], Any] = lambda params: None
  update_state: Callable[[Any, Draws, Array], Any] = lambda family_state, draws, per_example: (
    family_state
  )
  clip_mask: Callable[[Params], Any] | None = None
  represent: Callable[[Params, Array], Array] | None = None
  samples: str = "images"
  reconstruct: Callable[[Params, Array], tuple[Array, Array]] | None = None
  advance: Callable[[Any], Any] | None = None
  sampler_files: Callable[[str], tuple[str, ...]] = lambda workdir: ()


def as_json(block: ml_collections.ConfigDict | dict) -> dict:
  """A config block as its config.json has it (tuples become lists), so that a block read from a
  workdir compares equal to the same block built by a config file."""
  return json.loads(json.dumps(block if isinstance(block, dict) else block.to_dict()))


# model.* fields that change how a network computes, not its parameters
EXECUTION_FIELDS = ("dtype", "remat", "conv_impl")


def parameter_fields(model: ml_collections.ConfigDict | dict) -> dict:
  """A model block's fields that shape its parameters (`as_json` without EXECUTION_FIELDS)."""
  return {k: v for k, v in as_json(model).items() if k not in EXECUTION_FIELDS}


def sample_shape(batch_size: int, data_config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """[B, H, W, C] of a batch of `data_config`'s images."""
  return (batch_size, data_config.image_size, data_config.image_size, data_config.num_channels)


def make_trajectory_sampler(
  make_trajectory: Callable[..., TrajectoryFn], data_config: ml_collections.ConfigDict
) -> Callable[..., SampleFn]:
  """A family's `make_sampler` that walks its configured trajectory from Gaussian noise."""

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    del workdir
    shape = sample_shape(batch_size, data_config)
    return trajectory_sampler(make_trajectory(guide), shape, progress)

  return make_sampler


def trajectory_sampler(
  trajectory_fn: TrajectoryFn, shape: tuple, progress: bool = False, finish=lambda x: x
) -> SampleFn:
  """The SampleFn that walks `trajectory_fn(params, cond, …)` from its prior draw of `shape`
  (`sampling.sample`), `finish` applied to the result."""

  def sample(params, rng, cond=None, guide_params=None, controls=None, x_T=None):
    trajectory = trajectory_fn(params, cond, guide_params, controls)
    return finish(sampling.sample(trajectory, rng, shape, x_T, progress))

  return sample


def no_initial_noise(x_T: Array | None, sampler: str) -> None:
  """A sampler that does not start from Gaussian noise x_T refuses one."""
  if x_T is not None:
    raise ValueError(f"{sampler} does not start from Gaussian noise: it takes no x_T.")


def apply_kwargs(dropout_rng: Array | None) -> dict[str, Any]:
  """model.apply's keywords: training with dropout from `dropout_rng`, or deterministic when
  None."""
  if dropout_rng is None:
    return {"train": False}
  return {"train": True, "rngs": {"dropout": dropout_rng}}


def dummy_inputs(data_config: ml_collections.ConfigDict, channels: int | None = None):
  """(x [1, H, W, C], t [1]) for `model.init`; `channels` defaults to the data's."""
  size = data_config.image_size
  return jnp.zeros((1, size, size, channels or data_config.num_channels)), jnp.zeros(
    (1,), jnp.int32
  )


def dummy_context(model_config: ml_collections.ConfigDict) -> Array | None:
  """A context [1, 1, context_dim] for `model.init` (the parameters do not depend on L)."""
  context_dim = model_config.get("context_dim")
  return jnp.zeros((1, 1, context_dim)) if context_dim else None


def conditioning_labels(
  key: Array, batch: Batch, model_config: ml_collections.ConfigDict, label_dropout: float
) -> Array | None:
  """The class labels a conditional model trains on: the batch's, replaced by the null label ∅ =
  num_classes on a random `label_dropout` fraction (classifier-free guidance); None if
  unconditional."""
  num_classes = model_config.get("num_classes")
  if not num_classes:
    return None
  drop = jax.random.bernoulli(key, label_dropout, batch["label"].shape)
  return jnp.where(drop, num_classes, batch["label"])


def dropped_condition(key: Array, batch: Batch, field: str, label_dropout: float) -> Array | None:
  """The batch's `field` (contexts [B, L, D], embeddings [B, D]) a conditional model trains on,
  replaced by the null ∅ = 0 on a random `label_dropout` fraction (classifier-free guidance); None
  where the batch has none."""
  if field not in batch:
    return None
  # the key and shape of `conditioning_labels`' draw: label, context and embedding are dropped
  # together, so that the unconditional model (∅, ∅, ∅) trains at the full rate
  drop = jax.random.bernoulli(key, label_dropout, batch[field].shape[:1])
  drop = drop.reshape(drop.shape + (1,) * (batch[field].ndim - 1))
  return jnp.where(drop, 0.0, batch[field])


def null_context(context: Array | None) -> Array | None:
  """∅ = the zero context or embedding (a real one is never exactly 0 in every entry)."""
  return None if context is None else jnp.zeros_like(context)


def no_context_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Contexts condition the U-Net of the families that sample from noise; ARDM refuses them."""
  if config.model.get("context_dim"):
    return [
      "model.context_dim (cross-attention to contexts) trains with the families gaussian, edm, "
      f"score_sde and vdm, not config.family={config.family!r}."
    ]
  return []


def image_data_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A family of image models refuses data that are vectors (data.dataset="embeddings"), and any
  but the flow family a flow's (image, noise) pairs (data.dataset="reflow")."""
  if config.data.dataset == "embeddings":
    return [
      f"data.dataset='embeddings' holds vectors, not images: config.family='prior' learns them, "
      f"not config.family={config.family!r}."
    ]
  if config.data.dataset == "reflow" and config.family != "flow":
    return [
      "data.dataset='reflow' holds a flow's (noise, image) pairs: config.family='flow' trains on "
      f"them, not config.family={config.family!r}."
    ]
  return []


# the networks of x's shape given (x_t, noise level, label[, context]): the U-Net and DiT
IMAGE_NETWORKS = ("unet", "dit")


def unet_problems(
  config: ml_collections.ConfigDict,
  out_channels: int,
  why: str,
  embeddings: bool = False,
  networks: tuple[str, ...] = ("unet",),
) -> list[str]:
  """The checks of a family that trains a network of x's shape with `out_channels` outputs (`why`
  says what needs them), one of `networks` (model.name: the U-Net, or DiT); `embeddings`: whether
  it feeds the U-Net data embeddings (model.embedding_dim)."""
  problems = image_data_problems(config)
  if config.model.get("name", "unet") not in networks:
    problems.append(
      f"config.family={config.family!r} trains model.name "
      f"{' or '.join(repr(n) for n in networks)}, not {config.model.name!r}."
    )
  elif config.model.out_channels != out_channels:
    problems.append(
      f"model.out_channels={config.model.out_channels} but {why} need {out_channels}."
    )
  if config.model.get("embedding_dim") and not embeddings:
    problems.append(
      f"model.embedding_dim={config.model.embedding_dim}: the U-Net is given its data's "
      f"embeddings (data.embedding_key) by config.family='gaussian', not {config.family!r}."
    )
  return problems


def no_likelihood_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A family without bits/dim refuses eval.bpd_num_batches."""
  if config.eval.bpd_num_batches:
    return [
      f"config.family={config.family!r} has no likelihood: eval.bpd_num_batches="
      f"{config.eval.bpd_num_batches} must be 0."
    ]
  return []


def no_guidance_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Classifier guidance is a Gaussian-diffusion sampler's; other families refuse a classifier."""
  if config.sampling.classifier_workdir and config.sampling.classifier_scale:
    return [
      f"sampling.classifier_workdir guides the 'gaussian' family's samplers, not "
      f"config.family={config.family!r}: a noisy classifier is trained on x_t and t of the "
      "Gaussian diffusion, which this family's noise levels are not (classifier-free guidance, "
      "sampling.guidance_scale, works here)."
    ]
  return []
