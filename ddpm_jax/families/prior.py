"""unCLIP's diffusion prior (Ramesh et al. 2022, §2.2): Gaussian diffusion (config.diffusion;
unCLIP: the cosine schedule, x0-prediction) over embedding vectors z ∈ R^D, conditioned on a
class label and/or a caption's token embeddings [L, Dc], with classifier-free guidance (both
dropped together at training.label_dropout). The denoiser is `models.prior.PriorTransformer`, sized
by config.prior.

Data: data.dataset="embeddings", data.path an .npz of "embedding" [N, D] with "label" [N] and/or
"caption_embedding" [N, L, Dc] (e.g. --mode=represent's codes, or CLIP embeddings computed
elsewhere). D, Dc and the classes are read from the file when training starts (`complete`) and
kept in the run's config.json. Samples are embeddings: --mode=sample writes
samples/samples_<step>.npz with "embeddings" [N, D] and "labels" [N]; a decoder run turns them into
images (its sampling.prior_workdir). The caption travels as `Cond.context`.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.data import sources
from ddpm_jax.families import base, gaussian
from ddpm_jax.models.prior import PriorTransformer

SAMPLERS = gaussian.SAMPLERS
# vectors from an .npz (its last 5 % held out), not pixels in [-1, 1] (never clipped), and no image
# metrics
SHARED_DEFAULTS = {
  "data.dataset": "embeddings",
  "data.train_split": "train[:95%]",
  "data.eval_split": "train[95%:]",
  "sampling.clip_denoised": False,
  "eval.num_fid_samples": 0,
  "eval.bpd_num_batches": 0,
}
CONTROLS = ("guidance_scale", "eta")


def default_config() -> ml_collections.ConfigDict:
  prior = ml_collections.ConfigDict()
  prior.width = 128  # the Transformer's token width
  prior.depth = 4
  prior.num_heads = 4
  # read from data.path when training starts (None: not yet)
  prior.embedding_dim = config_dict.placeholder(int)
  prior.caption_dim = config_dict.placeholder(int)  # 0: the data has no captions
  return prior


CONFIG_BLOCKS = {"diffusion": gaussian.diffusion_config, "prior": default_config}
RANGES = {
  **dict.fromkeys(
    ["prior.width", "prior.depth", "prior.num_heads", "prior.embedding_dim"], (1, True, None, False)
  ),
  "prior.caption_dim": (0, True, None, False),
}


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (in place) with what data.path fixes: prior.embedding_dim D, prior.caption_dim Dc
  (0: no captions) and, where the file has labels and the config none, model.num_classes."""
  path = config.data.get("path")
  if config.data.dataset != "embeddings" or not path or not os.path.exists(path):
    return config  # the loader or `make_model` says what is missing
  source = sources.EmbeddingsSource(config.data.path, "train")
  example = source[0]
  if config.prior.embedding_dim is None:
    config.prior.embedding_dim = int(example["embedding"].shape[-1])
  if config.prior.caption_dim is None:
    caption = example.get("caption_embedding")
    config.prior.caption_dim = 0 if caption is None else int(np.shape(caption)[-1])
  if not config.model.num_classes:
    config.model.num_classes = source.num_classes
  return config


def validate(config: ml_collections.ConfigDict) -> list[str]:
  problems = gaussian.diffusion_sampling_problems(config) + base.no_guidance_problems(config)
  known = sources.dataset_spec(config.data.dataset) is not None  # (else refused by name already)
  if config.data.dataset != "embeddings" and known:
    problems.append(
      f"config.family='prior' learns embeddings from data.dataset='embeddings' (an .npz in "
      f"data.path), not data.dataset={config.data.dataset!r}."
    )
  if config.diffusion.var_type in diffusion.LEARNED_VAR_TYPES:
    problems.append(
      f"diffusion.var_type={config.diffusion.var_type!r}: the prior's network predicts the mean "
      "only; use a fixed variance (fixed_small / fixed_large)."
    )
  for field in ("context_dim", "embedding_dim"):
    if config.model.get(field):
      problems.append(
        f"model.{field} is the U-Net's; the prior conditions on data.path's labels and captions."
      )
  if config.eval.num_fid_samples or config.eval.bpd_num_batches:
    problems.append(
      "config.family='prior' samples embeddings, not images: set eval.num_fid_samples=0 and "
      "eval.bpd_num_batches=0 (its samples are evaluated through a decoder, "
      "sampling.prior_workdir)."
    )
  return problems


def caption_conditioning(config: ml_collections.ConfigDict) -> gaussian.Conditioning:
  """A caption's token embeddings [B, L, Dc] (`Cond.context`), dropped to zeros with the label."""
  active = bool(config.prior.caption_dim)
  return gaussian.dropped_array(config, "context", active, "caption_embedding", "caption")


def make_model(config: ml_collections.ConfigDict) -> PriorTransformer:
  options = config.prior
  if options.embedding_dim is None:
    raise ValueError(
      "prior.embedding_dim is not known yet: it is read from data.path when training starts "
      "(sample from the run's workdir, whose config.json has it)."
    )
  return PriorTransformer(
    embedding_dim=options.embedding_dim,
    width=options.width,
    depth=options.depth,
    num_heads=options.num_heads,
    num_classes=config.model.num_classes,
    caption_dim=options.caption_dim or 0,
  )


def build(config: ml_collections.ConfigDict) -> base.Family:
  gaussian_diffusion = gaussian.make_diffusion(config, continuous_data=True)  # embeddings
  model = make_model(config)
  captions = caption_conditioning(config)
  sampling_config, num_timesteps = config.sampling, gaussian_diffusion.num_timesteps

  def apply(params, x_t, t, labels, conditions):
    x, inputs = gaussian.unet_inputs((captions,), x_t, conditions)
    return model.apply(params, x, t, labels, **inputs)

  def draw(keys: base.StepKeys, batch: base.Batch, family_state) -> base.Draws:
    del family_state
    label_dropout = config.training.label_dropout
    return {
      **gaussian.timestep_draws(keys, batch["embedding"], num_timesteps),
      "labels": base.conditioning_labels(keys.labels, batch, config.model, label_dropout),
      "conditions": {"context": captions.of_batch(keys, batch)},
    }

  def loss(params, batch, draws, dropout_rng):
    del dropout_rng  # no dropout
    model_fn = lambda x_t, t: apply(params, x_t, t, draws["labels"], draws["conditions"])
    z = batch["embedding"]
    return diffusion.training_losses(gaussian_diffusion, model_fn, z, draws["t"], draws["eps"])[
      "loss"
    ]

  def make_trajectory(guide=None) -> base.TrajectoryFn:
    del guide  # refused by validate

    def trajectory(params, cond=None, guide_params=None, controls=None):
      del guide_params
      controls = {**{name: sampling_config[name] for name in CONTROLS}, **(controls or {})}
      model_fn = gaussian.free_guidance(
        lambda y, conditions: lambda x_t, t: apply(params, x_t, t, y, conditions),
        cond or base.Cond(),
        (captions,),
        sampling_config,
        controls["guidance_scale"],
        config.prior.embedding_dim,
      )
      return gaussian.configured_trajectory(gaussian_diffusion, model_fn, controls, sampling_config)

    return trajectory

  def make_sampler(batch_size: int, progress: bool = False, guide=None, workdir=None):
    del workdir
    shape = (batch_size, config.prior.embedding_dim)
    return base.trajectory_sampler(make_trajectory(guide), shape, progress)

  def init_params(rng):
    x = np.zeros((1, config.prior.embedding_dim), np.float32)
    caption = None
    if config.prior.caption_dim:
      caption = np.zeros((1, 1, config.prior.caption_dim), np.float32)
    return model.init(rng, x, np.zeros((1,), np.int32), None, caption)

  return base.Family(
    name="prior",
    model=model,
    init_params=init_params,
    draw=draw,
    loss=loss,
    make_sampler=make_sampler,
    make_trajectory=make_trajectory,
    sample_controls=CONTROLS,
    conditions=("label",) * bool(config.model.num_classes) + ("context",) * captions.active,
    samples="embeddings",
  )
