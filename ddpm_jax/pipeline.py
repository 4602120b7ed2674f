"""A trained (or converted) workdir as a two-line pipeline for notebooks and scripts:

  pipe = ddpm_jax.load("runs/default")
  images = pipe.sample(16, sampler="ddim", num_steps=50)      # uint8 [16, H, W, C]
  bpd = pipe.bits_per_dim(images)                             # [16]

unCLIP's two stages: `decoder.sample(16, prior=ddpm_jax.load("runs/prior"), labels=labels)` (the
prior's embeddings for `labels`, decoded); a prior's own `sample` returns embeddings [N, D].

Each sampler is compiled once per (batch size, sampler, number of steps, guidance on/off): the seed,
the labels, the guidance scales and DDIM's η are arguments of the compiled loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import families, pixels
from ddpm_jax.jobs import latent
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.runtime import parallel


class Pipeline:
  """The EMA parameters of a workdir's newest checkpoint with its config's family."""

  def __init__(self, config: ml_collections.ConfigDict, ema_params, step: int, mesh=None):
    self.config, self.params, self.step = config, ema_params, step
    self.mesh = mesh or parallel.make_mesh()
    self.family = families.get_family(config)
    self._samplers: dict[tuple, object] = {}
    self._config_classifier: Pipeline | None = None
    self._bits_per_dim = jax.jit(self.family.bits_per_dim) if self.family.bits_per_dim else None
    # a latent run's autoencoder (config.latent.autoencoder_workdir): its samples come decoded
    self._autoencoder = latent.load_autoencoder(config, self.mesh)

  def _sampler(
    self,
    batch_size: int,
    sampler: str | None,
    num_steps: int | None,
    guided: bool,
    classifier: Pipeline | None,
  ):
    key = (batch_size, sampler, num_steps, guided, classifier)
    if key not in self._samplers:
      config = self.config.copy_and_resolve_references()
      if sampler is not None:
        config.sampling.sampler = sampler
      if num_steps is not None:
        config.sampling.num_steps = num_steps
      # Any non-zero value switches guidance on; the scales themselves are arguments.
      config.sampling.guidance_scale = 1.0 if guided else 0.0
      config.sampling.classifier_workdir = "(the classifier given)" if classifier else None
      config.sampling.classifier_scale = 1.0 if classifier else 0.0
      problems = families.family_module(config.family).validate(config)
      if problems:
        raise ValueError(" ".join(problems))
      guide = None if classifier is None else classifier.family.model
      self._samplers[key] = sample_lib.make_sample_fn(
        families.get_family(config), batch_size, self.mesh, guide=guide
      )
    return self._samplers[key]

  def _classifier(self, classifier: Pipeline | None) -> Pipeline | None:
    """The noisy classifier that guides: the one given, else the config's
    (sampling.classifier_workdir with a non-zero classifier_scale), loaded once."""
    sampling_config = self.config.sampling
    if (
      classifier is None and sampling_config.classifier_workdir and sampling_config.classifier_scale
    ):
      if self._config_classifier is None:
        self._config_classifier = load(sampling_config.classifier_workdir)
      classifier = self._config_classifier
    if classifier is None:
      return None
    if classifier.family.name != "classifier":
      raise ValueError(
        f"classifier must be the pipeline of a noisy classifier's workdir (config.family="
        f"'classifier'), not of config.family={classifier.family.name!r}."
      )
    ours, theirs = self.config.diffusion, classifier.config.diffusion
    if (ours.num_timesteps, ours.beta_schedule) != (theirs.num_timesteps, theirs.beta_schedule):
      raise ValueError(
        f"The classifier was trained on the noise of {theirs.num_timesteps} steps of a "
        f"{theirs.beta_schedule!r} schedule; this model's are {ours.num_timesteps} of "
        f"{ours.beta_schedule!r}."
      )
    return classifier

  def sample(
    self,
    num_images: int,
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    labels=None,
    contexts=None,
    low_res=None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    seed: int = 0,
    uint8: bool = True,
    x_T=None,
    classifier: Pipeline | None = None,
    classifier_scale: float | None = None,
    embeddings=None,
    prior: Pipeline | None = None,
    prior_guidance_scale: float | None = None,
  ) -> np.ndarray:
    """-> uint8 images [num_images, H, W, C] (a prior's: embeddings [num_images, D]). `sampler` and
    `num_steps` default to the config's; `labels` [num_images] (class-conditional models; None:
    the null label), `contexts` [num_images, L, D] (context-conditional models; None: the null
    context), `low_res` uint8
    [num_images, s, s, C] (what a super-resolution model upsamples), `guidance_scale`
    (classifier-free guidance w; None: none), `eta` (DDIM's η; None: the config's); `uint8=False`
    returns the float samples in [-1, 1]. `x_T` float [num_images, H, W, C]: the initial noise
    (else drawn from `seed`). `classifier`: `ddpm_jax.load(classifier_workdir)` of a noisy
    classifier, which guides towards `labels` with scale `classifier_scale` s (ADM; None: the
    config's); without one, the config's sampling.classifier_workdir guides where it names one.
    `embeddings` [num_images, D]: what an embedding-conditioned decoder decodes (None: ∅), or
    `prior`: `ddpm_jax.load(prior_workdir)` of a diffusion prior, which samples them first given
    `labels` (its condition; the decoder's too where it is class-conditional) with guidance
    `prior_guidance_scale`, from `seed`. A prior's own samples are embeddings [num_images, D]."""
    if prior is not None:
      if embeddings is not None or prior.family.samples != "embeddings":
        raise ValueError("prior= is a diffusion prior's pipeline, in place of embeddings=.")
      embeddings = prior.sample(
        num_images, labels=labels, guidance_scale=prior_guidance_scale, seed=seed
      )
      labels = labels if self.config.model.get("num_classes") else None
    embedding_dim = self.config.model.get("embedding_dim")
    if embeddings is not None:
      embeddings = np.asarray(embeddings, np.float32)
      if not embedding_dim or embeddings.shape != (num_images, embedding_dim):
        raise ValueError(
          f"embeddings must be [{num_images}, model.embedding_dim] for an embedding-conditioned "
          f"decoder; this one has model.embedding_dim={embedding_dim} and embeddings "
          f"{embeddings.shape}."
        )
    elif "embedding" in self.family.conditions and self.family.represent is None:
      embeddings = np.zeros((num_images, embedding_dim), np.float32)  # ∅
    classifier = self._classifier(classifier)
    if classifier is not None and labels is None:
      raise ValueError("Classifier guidance needs labels: the classes to guide towards.")
    towards = contexts is not None and low_res is None or embeddings is not None
    if guidance_scale is not None and labels is None and not towards:
      raise ValueError(
        "guidance_scale needs labels, contexts or embeddings: what to guide towards."
      )
    context_dim = self.config.model.get("context_dim")
    size = self.config.super_res.low_res_size if "low_res" in self.family.conditions else 0
    if (low_res is None) != (not size):
      raise ValueError(
        "low_res (uint8 [N, s, s, C]) is what a super-resolution model upsamples: give it for "
        f"one and only for one; this model's low-res size is {size or 'none'}."
      )
    if size:
      low_res = np.asarray(low_res)
      expected = (num_images, size, size, self.config.data.num_channels)
      if low_res.dtype != np.uint8 or low_res.shape != expected:
        raise ValueError(f"low_res must be uint8 {expected}; got {low_res.dtype} {low_res.shape}.")
      low_res = pixels.from_uint8(low_res)
    elif contexts is not None:
      contexts = np.asarray(contexts, np.float32)
      if not context_dim or contexts.ndim != 3 or contexts.shape[::2] != (num_images, context_dim):
        raise ValueError(
          f"contexts must be [{num_images}, L, model.context_dim] for a context-conditional "
          f"model; this one has model.context_dim={context_dim} and contexts {contexts.shape}."
        )
    elif context_dim:
      contexts = np.zeros((num_images, 1, context_dim), np.float32)  # ∅
    if x_T is not None:
      x_T = np.asarray(x_T, np.float32)
      data = self.config.data
      expected = (num_images, data.image_size, data.image_size, data.num_channels)
      if self.family.samples == "embeddings":
        expected = (num_images, self.config.prior.embedding_dim)
      if x_T.shape != expected:
        raise ValueError(f"x_T must be the initial noise {expected}; got shape {x_T.shape}.")
    if labels is not None:
      labels = np.asarray(labels, np.int32)
      num_classes = self.config.model.get("num_classes") or 0
      if classifier is not None:  # the classes the classifier tells apart
        num_classes = classifier.config.model.num_classes
      if labels.shape != (num_images,) or not num_classes:
        raise ValueError(
          f"labels must have shape ({num_images},) for a class-conditional model; this one has "
          f"model.num_classes={num_classes} and labels of shape {labels.shape}."
        )
      if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
          f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}."
        )
    guided = guidance_scale is not None
    sample_fn = self._sampler(num_images, sampler, num_steps, guided, classifier)
    given = {"guidance_scale": guidance_scale or 0.0, "eta": eta}
    if classifier is not None:
      given["classifier_scale"] = classifier_scale
      if classifier_scale is None and not self.config.sampling.classifier_scale:
        raise ValueError("Give classifier_scale: this config's sampling.classifier_scale is 0.")
    controls = {  # every control, so that the compiled sampler sees the same arguments each call
      name: jnp.float32(self.config.sampling[name] if given.get(name) is None else given[name])
      for name in self.family.sample_controls
    }
    cond = families.Cond(
      *(None if a is None else jnp.asarray(a) for a in (labels, contexts, low_res, embeddings))
    )
    guide_params = None if classifier is None else classifier.params
    x_T = None if x_T is None else jnp.asarray(x_T)
    images = sample_fn(self.params, jax.random.key(seed), cond, guide_params, controls, 0, x_T)
    images = parallel.to_host(latent.images_of(self._autoencoder, images))
    return pixels.to_uint8(images) if uint8 and self.family.samples == "images" else images

  def bits_per_dim(
    self, images: np.ndarray, seed: int = 0, labels=None, contexts=None
  ) -> np.ndarray:
    """The family's likelihood (bound) of uint8 images [N, H, W, C] in bits/dim -> [N]; a
    conditional model's given the images' `labels` [N] and `contexts` [N, L, D] (None: ∅); a
    super-resolution model's given each image's own downsampled image."""
    if self._bits_per_dim is None:
      raise ValueError(f"config.family={self.family.name!r} has no likelihood.")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 [N, H, W, C]; got {images.dtype} {images.shape}.")
    x0 = jnp.asarray(pixels.from_uint8(images))
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    if "context" in self.family.conditions and contexts is None:
      contexts = jnp.zeros((len(x0), 1, self.config.model.context_dim))  # ∅
    cond = families.Cond(label=labels, context=None if contexts is None else jnp.asarray(contexts))
    terms = self._bits_per_dim(self.params, x0, jax.random.key(seed), cond)
    return np.asarray(terms["bpd"])


def load(workdir: str, config: ml_collections.ConfigDict | None = None) -> Pipeline:
  """The pipeline of `workdir`: its config (workdir/config.json, written by training and by
  checkpoint conversion, unless `config` is given) and its newest checkpoint's EMA parameters."""
  if config is None:
    config = sample_lib.workdir_config(workdir)
  mesh = parallel.make_mesh()
  ema_params, step = sample_lib.restore_ema_params(config, workdir, mesh)
  return Pipeline(config, ema_params, step, mesh)
