"""Training: one train state, one jitted step over the device mesh, and the loop that runs it.

  state = create_train_state(config, rng)           # .step .params .ema_params .opt_state (.loss_history)
  step_fn = make_train_step(config)                 # jitted (state, batch, rng) -> (state, metrics)
  train_and_evaluate(config, workdir)               # resumes from workdir/checkpoints when present
"""
from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

from absl import logging
from etils import epath
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddpm_jax import ardm, checkpoint, diffusion, input_pipeline, losses, models, parallel, schedules, sde, vdm
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.evaluation import sample as sample_lib

NUM_LOSS_QUARTILES = 4


@flax.struct.dataclass
class TrainState:
  step: jax.Array                                  # int32 scalar: optimizer updates done
  params: Any
  ema_params: Any
  opt_state: Any
  loss_history: diffusion.LossHistory | None = None  # only with the loss-aware timestep sampler


def make_diffusion(config: ml_collections.ConfigDict) -> diffusion.GaussianDiffusion:
  c = config.diffusion
  betas = schedules.get_beta_schedule(c.beta_schedule, c.num_timesteps)
  return diffusion.GaussianDiffusion.from_betas(betas, c.mean_type, c.var_type, c.loss_type)


def make_sde(config: ml_collections.ConfigDict):
  """The score SDE of `config.sde.name` ("vp" | "subvp" | "ve"), or None for the discrete-time diffusion."""
  c = config.sde
  if not c.name:
    return None
  if c.name == "ve":
    return sde.VESDE(c.sigma_min, c.sigma_max, N=c.num_scales)
  return {"vp": sde.VPSDE, "subvp": sde.subVPSDE}[c.name](c.beta_min, c.beta_max, N=c.num_scales)


def vdm_eps_fn(config: ml_collections.ConfigDict, model, unet_params, labels=None, **apply_kwargs) -> vdm.EpsFn:
  """The U-Net as VDM's denoiser ε̂(z_t; γ_t), conditioned on 1000·(γ_t - γ_min)/(γ_max - γ_min) as the paper."""
  c = config.vdm
  return lambda z, gamma_t: model.apply(unet_params, z, 1000.0 * (gamma_t - c.gamma_min) / (c.gamma_max - c.gamma_min),
                                        labels, **apply_kwargs)


def ardm_values(config: ml_collections.ConfigDict, images: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> ARDM's integers in {0, …, K-1} (K = 256: the 8-bit values; K = 2: binarised)."""
  k = config.ardm.num_classes
  return jnp.clip(jnp.round((images + 1.0) * 0.5 * (k - 1)), 0, k - 1).astype(jnp.int32)


def ardm_images(config: ml_collections.ConfigDict, values: jax.Array) -> jax.Array:
  return values.astype(jnp.float32) / (config.ardm.num_classes - 1) * 2.0 - 1.0


def ardm_logits_fn(config: ml_collections.ConfigDict, model, params, **apply_kwargs) -> ardm.LogitsFn:
  """The U-Net as ARDM's network: input [the known values in [-1, 1] (0 where unknown), the known mask] (2·C
  channels), conditioned on t, the number known; output C·K channels -> logits [B, H, W, C, K]."""
  def logits_fn(x, known, t):
    inputs = jnp.concatenate([jnp.where(known, ardm_images(config, x), 0.0), known.astype(jnp.float32)], axis=-1)
    return model.apply(params, inputs, t, **apply_kwargs).reshape(x.shape + (config.ardm.num_classes,))
  return logits_fn


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then constant (DDPM App. B)."""
  if optim_config.warmup_steps <= 0:
    return optax.constant_schedule(optim_config.lr)
  return optax.join_schedules([optax.linear_schedule(0.0, optim_config.lr, optim_config.warmup_steps),
                               optax.constant_schedule(optim_config.lr)], [optim_config.warmup_steps])


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm's update, g · min(1, max_norm / ‖g‖), as a multiplication by one scalar.

  optax writes it as select(‖g‖ < max_norm, g, g / ‖g‖ · max_norm); XLA does not duplicate a division into
  several consumers, so it materialises g / ‖g‖ for Adam's two moments: one more write and two more reads of
  every gradient, ~4 % of the memory traffic of a CIFAR-10 training step. A multiplication fuses into each."""

  def update_fn(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam (β1 = 0.9, β2) — AdamW with `weight_decay` > 0 — on the warm-up schedule.

  A learned VDM schedule's shape follows a gradient of its own objective and scale (∇E[L²]), so it is left out
  of the clipping norm: it would otherwise scale the network's gradient down."""
  c = config.optim
  lr = learning_rate_schedule(c)
  adam = optax.adamw(lr, b2=c.beta2, weight_decay=c.weight_decay) if c.weight_decay else optax.adam(lr, b2=c.beta2)
  clip = clip_by_global_norm(c.grad_clip)
  if config.vdm.schedule == "learned":
    is_vlb_gradient = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path[:2]) != "['schedule']['net']", params)
    clip = optax.masked(clip, is_vlb_gradient)
  return optax.chain(clip, adam)


def _dummy_inputs(config):
  size, channels = config.data.image_size, config.data.num_channels * (2 if config.ardm.enabled else 1)
  return jnp.zeros((1, size, size, channels)), jnp.zeros((1,), jnp.int32)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Fresh parameters (EMA starts equal to them), optimizer state and, with importance sampling of t,
  an empty loss history. A VDM's parameters are {"unet": …, "schedule": …} (the schedule's γ_0, γ_1 and network)."""
  model = models.get_model(config.model)
  params = model.init(rng, *_dummy_inputs(config))
  if config.vdm.schedule:
    c = config.vdm
    params = {"unet": params, "schedule": vdm.init_schedule(jax.random.fold_in(rng, 1), c.schedule, c.gamma_min,
                                                            c.gamma_max, c.n_features)}
  loss_history = None
  if config.diffusion.timestep_sampler == "loss_aware":
    loss_history = diffusion.init_loss_history(config.diffusion.num_timesteps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=make_optimizer(config).init(params), loss_history=loss_history)


def _per_quartile_sums(t_fraction: jax.Array, step_losses: jax.Array) -> dict[str, jax.Array]:
  """Σ loss and count per quartile of t/T ∈ [0, 1] (as Improved DDPM logs); averaged over the log interval on the
  host."""
  quartile = jnp.clip(jnp.floor(t_fraction * NUM_LOSS_QUARTILES), 0, NUM_LOSS_QUARTILES - 1)
  out = {}
  for q in range(NUM_LOSS_QUARTILES):
    mask = (quartile == q).astype(jnp.float32)
    out[f"loss_q{q}_sum"] = jnp.sum(step_losses * mask)
    out[f"loss_q{q}_count"] = jnp.sum(mask)
  return out


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, model, d, optimizer,
               lr_schedule, config) -> tuple[TrainState, dict[str, jax.Array]]:
  """Sample t and ε, loss, gradients, update, EMA — in that order. Batch arrays are global (sharded over
  the mesh); random draws of global shape give every example, on every shard, its own noise."""
  rng = jax.random.fold_in(rng, state.step)
  t_rng, noise_rng, dropout_rng, label_rng = jax.random.split(rng, 4)
  x0 = batch["image"]
  batch_size = x0.shape[0]
  score_sde = make_sde(config)
  is_vdm, is_ardm = bool(config.vdm.schedule), config.ardm.enabled
  weights = jnp.ones((batch_size,), jnp.float32)
  # t and the loss's random draws ("noise"), drawn for the global batch: t/t_end ∈ [0, 1] is logged per quartile.
  if is_vdm:  # t ∈ [0, 1), low-discrepancy over the batch; ε and the reconstruction term's ε_0
    t, t_end = vdm.time_samples(t_rng, batch_size, config.vdm.antithetic_time), 1.0
    noise = tuple(jax.random.normal(jax.random.fold_in(noise_rng, i), x0.shape, x0.dtype) for i in range(2))
  elif is_ardm:  # t variables known, in a random order per example (the order's ranks take the place of ε)
    t_end = math.prod(x0.shape[1:])
    t = jax.random.randint(t_rng, (batch_size,), 0, t_end)
    noise = ardm.random_order(noise_rng, x0.shape)
  else:
    if score_sde is None:
      t, weights = diffusion.sample_timesteps(t_rng, batch_size, d.num_timesteps, state.loss_history)
      t_end = d.num_timesteps
    else:  # continuous time t ~ U(eps, T)
      t = jax.random.uniform(t_rng, (batch_size,), minval=config.sde.eps, maxval=score_sde.T)
      t_end = score_sde.T
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  is_classifier = config.model.name == "classifier"
  labels = None
  if is_classifier:
    labels = batch["label"]
  elif config.model.num_classes:
    # Classifier-free guidance trains the null label ∅ = num_classes on a random fraction of the batch.
    drop = jax.random.bernoulli(label_rng, config.training.label_dropout, (batch_size,))
    labels = jnp.where(drop, config.model.num_classes, batch["label"])

  def loss_fn(params, x0, t, noise, labels, weights, dropout_rng):
    rngs = {"dropout": dropout_rng}
    if is_classifier:  # ADM §4: cross-entropy of the noisy classifier on x_t at random t
      logits = model.apply(params, diffusion.q_sample(d, x0, t, noise), d.timestep_map[t], train=True, rngs=rngs)
      step_losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    elif is_vdm:  # the VLB in bits/dim (VDM eq. 11)
      eps_fn = vdm_eps_fn(config, model, params["unet"], labels, train=True, rngs=rngs)
      c = config.vdm
      terms = vdm.vlb_terms(params["schedule"], eps_fn, x0, t, *noise, c.num_steps, c.minimize_schedule_variance)
      step_losses = losses.bits_per_dim(terms["total"], x0)
    elif is_ardm:  # the unbiased one-step estimate of -log p(x), in bits/dim
      logits_fn = ardm_logits_fn(config, model, params, train=True, rngs=rngs)
      step_losses = losses.bits_per_dim(ardm.loss_at(logits_fn, ardm_values(config, x0), t, noise), x0)
    else:
      model_fn = lambda x_t, t_: model.apply(params, x_t, t_, labels, train=True, rngs=rngs)
      if score_sde is None:
        step_losses = diffusion.training_losses(d, model_fn, x0, t, noise)["loss"]
      else:  # continuous-time denoising score matching (Song et al. eq. 7)
        score_fn = sde.model_score_fn(score_sde, model_fn, config.sde.conditioning)
        step_losses = sde.dsm_loss(score_sde, score_fn, x0, t, noise, config.sde.likelihood_weighting)
    return jnp.mean(step_losses * weights), step_losses

  accum = config.optim.grad_accum_steps
  if accum == 1:
    (loss, step_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, x0, t, noise, labels, weights, dropout_rng)
  else:  # micro-batches in a scan: the same update as one big batch, with 1/accum of the activations
    micro = lambda tree: jax.tree_util.tree_map(lambda a: a.reshape((accum, batch_size // accum) + a.shape[1:]), tree)

    def accumulate(grads_sum, xs):
      i, x0_i, t_i, noise_i, labels_i, weights_i = xs
      (loss_i, losses_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, x0_i, t_i, noise_i, labels_i, weights_i, jax.random.fold_in(dropout_rng, i))
      return jax.tree_util.tree_map(jnp.add, grads_sum, grads_i), (loss_i, losses_i)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    grads, (micro_losses, step_losses) = jax.lax.scan(
        accumulate, zeros, (jnp.arange(accum), micro(x0), micro(t), micro(noise), micro(labels), micro(weights)))
    grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
    loss, step_losses = jnp.mean(micro_losses), step_losses.reshape(batch_size)

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - config.optim.ema_decay)
  loss_history = state.loss_history
  if loss_history is not None:
    loss_history = diffusion.update_loss_history(loss_history, t, step_losses)
  new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                         loss_history=loss_history)
  metrics = dict(loss=loss, grad_norm=grad_norm, lr=lr_schedule(state.step),
                 finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm),
                 **_per_quartile_sums(t / t_end, step_losses))
  return new_state, metrics


def abstract_train_state(config: ml_collections.ConfigDict, mesh):
  """Shapes, dtypes and shardings of the train state, without allocating it (the target of a restore)."""
  abstract = jax.eval_shape(functools.partial(create_train_state, config), jax.random.key(0))
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                parallel.state_shardings(abstract, mesh, config.training.fsdp))


def state_sharding(config: ml_collections.ConfigDict, mesh):
  return jax.tree_util.tree_map(lambda a: a.sharding, abstract_train_state(config, mesh))


def make_train_step(config: ml_collections.ConfigDict, mesh=None, shardings=None):
  """The train step jitted over `mesh` (default: all devices): batch sharded along "data", state replicated
  (or FSDP-sharded; `shardings` when the caller has them), the old state donated.
  -> (state, batch, rng) -> (state, metrics)."""
  mesh = mesh or parallel.make_mesh()
  step = functools.partial(train_step, model=models.get_model(config.model), d=make_diffusion(config),
                           optimizer=make_optimizer(config), lr_schedule=learning_rate_schedule(config.optim),
                           config=config)
  shardings = shardings or state_sharding(config, mesh)
  return jax.jit(step, in_shardings=(shardings, parallel.data_sharding(mesh), parallel.replicated(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


# ----------------------------------------------------------------------------------------------------------
# Config validation: every impossible or inconsistent setting, in one message, before anything compiles.


KNOWN_DATASETS = ("digits", "image_folder", "cifar10", "celeb_a_hq", "lsun", "downsampled_imagenet", "mnist",
                  "fashion_mnist", "celeb_a", "imagenet2012", "oxford_flowers102")


def validate_config(config: ml_collections.ConfigDict) -> None:
  errors = []
  data, model, diff, optim, training = config.data, config.model, config.diffusion, config.optim, config.training
  devices = jax.device_count()
  if training.batch_size % devices:
    errors.append(f"training.batch_size={training.batch_size} is not divisible by the {devices} devices.")
  if training.batch_size % (devices * optim.grad_accum_steps):
    errors.append(f"training.batch_size={training.batch_size} does not split into optim.grad_accum_steps="
                  f"{optim.grad_accum_steps} micro-batches over {devices} devices.")
  if data.dataset.split("/")[0] not in KNOWN_DATASETS:
    errors.append(f"Unknown data.dataset {data.dataset!r}; known: {', '.join(KNOWN_DATASETS)} (tfds names may "
                  "carry a /config, e.g. celeb_a_hq/256).")
  for kind, value, choices in [("diffusion.beta_schedule", diff.beta_schedule, tuple(schedules.SCHEDULES)),
                               ("diffusion.mean_type", diff.mean_type, diffusion.MEAN_TYPES),
                               ("diffusion.var_type", diff.var_type, diffusion.VAR_TYPES),
                               ("diffusion.loss_type", diff.loss_type, diffusion.LOSS_TYPES),
                               ("diffusion.timestep_sampler", diff.timestep_sampler, ("uniform", "loss_aware")),
                               ("sampling.sampler", config.sampling.sampler, sample_lib.SAMPLERS),
                               ("sde.name", config.sde.name or "", ("", "vp", "subvp", "ve")),
                               ("sde.conditioning", config.sde.conditioning, sde.NOISE_CONDITIONINGS),
                               ("model.embedding_type", model.embedding_type, models.EMBEDDING_TYPES)]:
    if value not in choices:
      errors.append(f"Unknown {kind} {value!r}; valid: {', '.join(choices)}.")
  learned = diff.var_type in diffusion.LEARNED_VAR_TYPES
  if learned and diff.loss_type == "mse":
    errors.append(f"diffusion.var_type={diff.var_type!r} is learned but loss_type='mse' cannot train it; "
                  "use 'hybrid', 'kl' or 'rescaled_kl'.")
  if config.sde.name in ("vp", "subvp") and config.sde.num_scales <= config.sde.beta_max:
    errors.append(f"sde.num_scales={config.sde.num_scales} must exceed sde.beta_max={config.sde.beta_max}: the "
                  "discrete βs β(t)/N must stay below 1.")
  if config.vdm.schedule not in (None, *vdm.SCHEDULES):
    errors.append(f"Unknown vdm.schedule {config.vdm.schedule!r}; valid: None, {', '.join(vdm.SCHEDULES)}.")
  if config.vdm.schedule and (config.sde.name or learned or model.name != "unet"):
    errors.append("VDM (vdm.schedule) trains its own ε-prediction U-Net: no sde.name, learned variance or classifier.")
  if config.vdm.schedule and not config.vdm.gamma_min < config.vdm.gamma_max:
    errors.append(f"vdm.gamma_min={config.vdm.gamma_min} must be below vdm.gamma_max={config.vdm.gamma_max}.")
  if config.sde.name and (learned or model.get("num_classes")):
    errors.append("Score SDE training (sde.name) takes an unconditional ε-model: no learned variance or classes.")
  if config.sde.name and config.sde.conditioning == "sigma" and model.embedding_type != "fourier":
    errors.append("sde.conditioning='sigma' feeds the network log σ ∈ [log σ_min, log σ_max], a range the "
                  "sinusoidal embedding barely resolves: set model.embedding_type='fourier' (NCSN++).")
  if diff.loss_type == "hybrid" and not learned:
    errors.append("diffusion.loss_type='hybrid' needs a learned var_type ('learned' or 'learned_range').")
  expected_out = data.num_channels * (config.ardm.num_classes if config.ardm.enabled else 2 if learned else 1)
  if model.name == "classifier" and not model.get("num_classes"):
    errors.append("model.name='classifier' needs model.num_classes > 0 (the labels it predicts).")
  if model.name == "unet" and model.out_channels != expected_out:
    need = (f"ardm.num_classes={config.ardm.num_classes}" if config.ardm.enabled else f"var_type={diff.var_type!r}")
    errors.append(f"model.out_channels={model.out_channels} but {data.num_channels} data channels with {need} need "
                  f"{expected_out}.")
  if config.ardm.enabled and (config.sde.name or config.vdm.schedule or model.name != "unet"):
    errors.append("ARDM (ardm.enabled) trains its own U-Net on discrete values: no sde.name, vdm.schedule or "
                  "classifier.")
  if config.ardm.enabled and not 2 <= config.ardm.num_classes <= 256:
    errors.append(f"ardm.num_classes={config.ardm.num_classes} must be in [2, 256] (values of 8-bit images).")
  levels = len(model.ch_mult)
  if data.image_size % 2 ** (levels - 1):
    errors.append(f"data.image_size={data.image_size} cannot be halved {levels - 1} times (model.ch_mult={model.ch_mult}).")
  resolutions = [data.image_size // 2**i for i in range(levels)]
  missing = [r for r in model.attn_resolutions if r not in resolutions]
  if missing:
    errors.append(f"model.attn_resolutions {missing} are not resolutions of this model; it has {resolutions}.")
  widths = {model.ch * m for m in model.ch_mult}
  if any(w % 32 for w in widths):
    errors.append(f"Every width model.ch·ch_mult must be divisible by 32 (GroupNorm(32) groups); got {sorted(widths)}.")
  if not 0.0 <= optim.ema_decay < 1.0:
    errors.append(f"optim.ema_decay={optim.ema_decay} must be in [0, 1).")
  if optim.lr <= 0:
    errors.append(f"optim.lr={optim.lr} must be positive.")
  if min(training.log_every_steps, training.checkpoint_every_steps, training.eval_every_steps) <= 0:
    errors.append("training.log_every_steps, checkpoint_every_steps and eval_every_steps must be positive.")
  if errors:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(errors))


# ----------------------------------------------------------------------------------------------------------
# The loop.


class MetricLogger:
  """Averages step metrics over the log interval; prints one console line and writes TensorBoard scalars."""

  def __init__(self, workdir: str, total_steps: int, is_writer: bool):
    self.total_steps, self.is_writer = total_steps, is_writer
    self.writer = None
    if is_writer:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.sums: dict[str, float] = {}
    self.count = 0
    self.last_time, self.last_step = time.time(), None

  def add(self, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def write(self, step: int) -> None:
    if not self.count:
      return
    now = time.time()
    steps_done = self.count if self.last_step is None else step - self.last_step
    steps_per_s = steps_done / max(now - self.last_time, 1e-9)
    scalars = {k: self.sums[k] / self.count for k in ("loss", "grad_norm", "lr")}
    for q in range(NUM_LOSS_QUARTILES):
      count = self.sums[f"loss_q{q}_count"]
      if count:
        scalars[f"loss_q{q}"] = self.sums[f"loss_q{q}_sum"] / count
    scalars["steps_per_s"] = steps_per_s
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    if self.is_writer:
      quartiles = " ".join(f"q{q} {scalars[f'loss_q{q}']:.4f}" for q in range(NUM_LOSS_QUARTILES)
                           if f"loss_q{q}" in scalars)
      logging.info("step %d/%d  loss %.5f (%s)  grad_norm %.3f  lr %.2e  %.2f steps/s  ETA %s", step,
                   self.total_steps, scalars["loss"], quartiles, scalars["grad_norm"], scalars["lr"], steps_per_s,
                   time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 86400:.1f} days")
      for k, v in scalars.items():
        self.writer.add_scalar(f"train/{k}", v, step)
      self.writer.flush()
    self.sums, self.count, self.last_time, self.last_step = {}, 0, now, step

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def run_rngs(seed: int) -> dict[str, jax.Array]:
  """The keys of a run: parameter initialisation, the train steps (folded with the step), EMA samples."""
  return dict(zip(("init", "train", "sample"), jax.random.split(jax.random.key(seed), 3)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint; returns the final state."""
  validate_config(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_writer = jax.process_index() == 0
  mesh = parallel.make_mesh()
  abstract_state = abstract_train_state(config, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract_state)
  train_step_fn = make_train_step(config, mesh, shardings)
  d, model = make_diffusion(config), models.get_model(config.model)

  ckpt = checkpoint.Checkpointer(workdir, config.training.keep_checkpoints)
  state, start_step = ckpt.restore_latest(abstract_state)
  rngs = run_rngs(config.seed)
  if state is None:
    state = jax.jit(functools.partial(create_train_state, config), out_shardings=shardings)(rngs["init"])
    start_step = 0
    if is_writer:
      (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  num_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(state.params))
  logging.info("Training %s parameters on %d devices from step %d to %d in %s.", f"{num_params:,}",
               jax.device_count(), start_step, config.training.num_train_steps, workdir)

  total = config.training.num_train_steps
  batch_sharding = parallel.data_sharding(mesh)
  batches = input_pipeline.prefetch(
      input_pipeline.batches(config.data, split="train", global_batch_size=config.training.batch_size,
                             seed=config.seed, start_step=start_step, num_steps=total - start_step),
      lambda b: parallel.global_batch(b, batch_sharding))
  logger = MetricLogger(workdir, total, is_writer)
  preemption = checkpoint.PreemptionFlag()
  if config.model.name == "unet":
    sample_fn = sample_lib.make_sample_fn(config, d, model, config.sampling.num_samples, mesh)

  def check(step: int, metrics) -> None:
    metrics = jax.device_get(metrics)
    if not metrics["finite"]:
      raise FloatingPointError(
          f"Non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) at step {step}; "
          f"stopping without saving this state. The newest checkpoint is step {ckpt.manager.latest_step()}.")
    logger.add({k: v for k, v in metrics.items() if k != "finite"})

  step, pending = start_step, None
  try:
    while step < total:
      state, metrics = train_step_fn(state, next(batches), rngs["train"])
      if pending is not None:  # checked one step late so that the host does not stall the device
        check(*pending)
      step += 1
      pending = (step, metrics)
      preempted = preemption.is_set(step)
      at_log = step % config.training.log_every_steps == 0 or step == total or preempted
      at_checkpoint = step % config.training.checkpoint_every_steps == 0 or step == total or preempted
      if at_log or at_checkpoint:  # this step is checked before anything is logged or saved from it
        check(*pending)
        pending = None
      if at_log:
        logger.write(step)
      if at_checkpoint:
        ckpt.save(step, state, config)
      if (config.model.name == "unet" and config.sampling.num_samples
          and (step % config.training.eval_every_steps == 0 or step == total)):
        write_sample_grid(sample_fn(state.ema_params, jax.random.fold_in(rngs["sample"], step), None), workdir, step,
                          logger)
      if preempted:
        logging.warning("Stopped for preemption at step %d; rerun the same command to resume.", step)
        break
  finally:
    ckpt.close()
    logger.close()
  return state


def write_sample_grid(samples: jax.Array, workdir: str, step: int, logger: MetricLogger) -> None:
  """EMA samples as a PNG grid in workdir/samples and in TensorBoard (written by process 0)."""
  samples = parallel.to_host(samples)  # a collective: every process takes part
  if jax.process_index() != 0:
    return
  grid = image_utils.grid_uint8(samples)
  path = image_utils.save_png(grid, os.path.join(workdir, "samples", f"ema_step_{step:08d}.png"))
  logger.writer.add_image("samples/ema", grid, step, dataformats="HWC")
  logging.info("Wrote %s.", path)
