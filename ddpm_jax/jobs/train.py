"""Training: one jitted step over the device mesh for every family, and the loop that runs it.

state = create_train_state(config, rng)     # .step .params .ema_params .opt_state (.family_state)
step_fn = make_train_step(config)           # jitted (state, batch, rng) -> (state, metrics)
train_and_evaluate(config, workdir)         # resumes from workdir/checkpoints when present
"""

from __future__ import annotations

import functools
import itertools
import math
import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddpm_jax import families, pixels
from ddpm_jax.data import loader
from ddpm_jax.evaluation import images as image_utils
from ddpm_jax.families.config_validation import validate_config
from ddpm_jax.jobs import evaluate, latent
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.jobs.train_state import (
  TrainState,
  abstract_train_state,
  config_key,
  create_train_state,
  run_rngs,
  state_sharding,
  warm_started,
)
from ddpm_jax.runtime import checkpoint, executables, flops, optim, parallel
from ddpm_jax.runtime.metric_writer import NUM_LOSS_QUARTILES, MetricWriter


def _per_quartile_sums(t_fraction: jax.Array, per_example: jax.Array) -> dict[str, jax.Array]:
  """Σ loss and count per quartile of t/T ∈ [0, 1] (as Improved DDPM logs); averaged over the log
  interval on the host."""
  quartile = jnp.clip(jnp.floor(t_fraction * NUM_LOSS_QUARTILES), 0, NUM_LOSS_QUARTILES - 1)
  out = {}
  for q in range(NUM_LOSS_QUARTILES):
    mask = (quartile == q).astype(jnp.float32)
    out[f"loss_q{q}_sum"] = jnp.sum(per_example * mask)
    out[f"loss_q{q}_count"] = jnp.sum(mask)
  return out


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  family: families.Family,
  optimizer: optax.GradientTransformation,
  lr_schedule: optax.Schedule,
  ema_decay: float,
  grad_accum_steps: int,
  skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The family's draws, loss, gradients, update, EMA — in that order. Batch arrays are global
  (sharded over the mesh); draws of global shape give every example, on every shard, its own
  noise. `skip_nonfinite`: a step with a non-finite loss or gradient keeps the old parameters,
  optimizer and family state (only the step count moves on)."""
  keys = families.step_keys(jax.random.fold_in(rng, state.step))
  draws = family.draw(keys, batch, state.family_state)
  batch_size = batch["label"].shape[0]

  def mean_loss(params, batch, draws, dropout_rng):
    per_example = family.loss(params, batch, draws, dropout_rng)
    return jnp.mean(per_example * draws["weight"]), per_example

  if grad_accum_steps == 1:
    (loss, per_example), grads = jax.value_and_grad(mean_loss, has_aux=True)(
      state.params, batch, draws, keys.dropout
    )
  # micro-batches in a scan: the same update as one big batch, with 1/accum of the activations
  else:
    micro = lambda tree: jax.tree_util.tree_map(
      lambda a: a.reshape((grad_accum_steps, batch_size // grad_accum_steps) + a.shape[1:]), tree
    )

    def accumulate(grads_sum, xs):
      i, batch_i, draws_i = xs
      (loss_i, per_example_i), grads_i = jax.value_and_grad(mean_loss, has_aux=True)(
        state.params, batch_i, draws_i, jax.random.fold_in(keys.dropout, i)
      )
      return jax.tree_util.tree_map(jnp.add, grads_sum, grads_i), (loss_i, per_example_i)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    grads, (micro_losses, per_example) = jax.lax.scan(
      accumulate, zeros, (jnp.arange(grad_accum_steps), micro(batch), micro(draws))
    )
    grads = jax.tree_util.tree_map(lambda g: g / grad_accum_steps, grads)
    loss, per_example = jnp.mean(micro_losses), per_example.reshape(batch_size)

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    ema_params=ema_params,
    opt_state=opt_state,
    family_state=family.update_state(state.family_state, draws, per_example),
  )
  if family.advance is not None:
    new_state = family.advance(new_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    kept = state.replace(step=new_state.step)
    new_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(finite, new, old), new_state, kept
    )
  metrics = dict(
    loss=loss,
    grad_norm=grad_norm,
    lr=lr_schedule(state.step),
    finite=finite,
    **_per_quartile_sums(draws["t_fraction"], per_example),
  )
  return new_state, metrics


def skips_nonfinite(training_config: ml_collections.ConfigDict) -> bool:
  """training.nonfinite="skip" (configs written before it: "stop")."""
  return training_config.nonfinite == "skip"


def make_train_step(config: ml_collections.ConfigDict, mesh=None):
  """The train step jitted over `mesh` (default: all devices): batch sharded along "data", state
  replicated (or FSDP-sharded, as `state_sharding` says), the old state donated.
  -> (state, batch, rng) -> (state, metrics)."""
  mesh = mesh or parallel.make_mesh()
  family = families.get_family(config)
  step = functools.partial(
    train_step,
    family=family,
    optimizer=optim.make_optimizer(config.optim, family.clip_mask),
    lr_schedule=optim.learning_rate_schedule(config.optim),
    ema_decay=config.optim.ema_decay,
    grad_accum_steps=config.optim.grad_accum_steps,
    skip_nonfinite=skips_nonfinite(config.training),
  )
  shardings = state_sharding(config, mesh)
  return jax.jit(
    step,
    in_shardings=(shardings, parallel.data_sharding(mesh), parallel.replicated(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=0,
  )


def compiled_train_step(config: ml_collections.ConfigDict, mesh, state, batch, rng):
  """`make_train_step` compiled for these arguments (a `jax.stages.Compiled`, FLOPs in its cost
  analysis), loaded where a restarted job saved it (runtime/executables.py)."""
  return executables.compiled(
    lambda: make_train_step(config, mesh), (state, batch, rng), "train_step", config_key(config)
  )


@jax.jit
def scale_images(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The input pipeline's uint8 images scaled to [-1, 1] on the accelerator (`pixels.from_uint8`,
  bitwise), where it costs nothing; float images (data.dataset="reflow"'s) as they are."""
  if "image" not in batch or batch["image"].dtype != jnp.uint8:  # vectors: "embeddings"
    return batch
  return {**batch, "image": jnp.take(jnp.asarray(pixels.FROM_UINT8_TABLE), batch["image"])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint; every
  `training.eval_every_steps` the EMA parameters' loss on `eval.num_loss_batches` held-out batches,
  every `training.sample_every_steps` a grid of EMA samples. Returns the final state."""
  config = families.completed(config)  # what the family reads from its data, kept in config.json
  validate_config(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_writer = jax.process_index() == 0
  mesh = parallel.make_mesh()
  family = families.get_family(config)
  abstract_state = abstract_train_state(config, mesh)

  ckpt = checkpoint.Checkpointer(workdir, config.training.keep_checkpoints)
  state, start_step = ckpt.restore_latest(abstract_state, config)
  rngs = run_rngs(config.seed)
  start_step = start_step if state is not None else 0
  training = config.training
  total = training.num_train_steps
  batch_sharding = parallel.data_sharding(mesh)
  autoencoder = latent.load_autoencoder(config, mesh)  # None: pixel space
  positions = iter(range(start_step, total))

  def to_model(batch):  # on the accelerator: [0, 255] -> [-1, 1], and a latent run's encoding
    key = latent.posterior_key(config.seed, next(positions))
    return latent.model_batch(autoencoder, scale_images(batch), key)

  batches = loader.prefetch(
    loader.batches(
      latent.input_data(config),
      split=config.data.train_split,
      global_batch_size=training.batch_size,
      seed=config.seed,
      start_step=start_step,
      num_steps=total - start_step,
      num_classes=config.model.get("num_classes", 0),
      context_dim=config.model.get("context_dim"),
      embedding_dim=config.model.get("embedding_dim"),
      uint8=True,
    ),
    lambda b: to_model(parallel.global_batch(b, batch_sharding)),
  )
  if state is None:
    state = warm_started(config, create_train_state(config, rngs["init"], mesh), mesh)
    if is_writer:
      (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  num_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(state.params))
  logging.info(
    "Training %s parameters (%s) on %d devices from step %d to %d in %s.",
    f"{num_params:,}",
    config.family,
    jax.device_count(),
    start_step,
    config.training.num_train_steps,
    workdir,
  )

  writer = MetricWriter(workdir, total, is_writer)
  if start_step < total:  # compiled ahead of time for its FLOPs (TFLOP/s and MFU in the logs)
    first_batch = next(batches)
    batches = itertools.chain([first_batch], batches)
    train_step_fn = compiled_train_step(config, mesh, state, first_batch, rngs["train"])
    writer.set_flops(
      flops.compiled_flops(train_step_fn), *flops.peak_flops_per_s(mesh.devices.flat[0])
    )
  preemption = checkpoint.PreemptionFlag()
  sample_grids = (
    bool(config.sampling.num_samples)
    and family.make_sampler is not None
    and family.samples == "images"
  )
  # the same noise at every step; one row per class for a class-conditional model
  if sample_grids:
    # (a super-resolution model's grid upsamples held-out images, not a base model's samples)
    num_samples = config.sampling.num_samples
    grid_batch = -(-num_samples // mesh.size) * mesh.size

    def sample_grid_cond(params):
      cond = sample_lib.conditioning_inputs(
        config, family, num_samples, mesh, cascade=False, params=params
      )
      if cond.label is None:
        cond = cond._replace(label=sample_lib.display_labels(config, num_samples))
      return cond

    grid_cond = sample_grid_cond(state.ema_params)
    grid_columns = None if grid_cond.label is None else sample_lib.row_length(grid_cond.label)
    sample_fn = None  # compiled (or loaded: a restarted job's) at the first grid
    grid_cond = sample_lib.batch_rows(grid_cond, 0, grid_batch)
  held_out_loss = (
    evaluate.make_held_out_loss(config, family, mesh, autoencoder)
    if config.eval.num_loss_batches
    else None
  )

  skip_nonfinite, skips_in_a_row = skips_nonfinite(training), 0

  def check(step: int, metrics) -> None:
    nonlocal skips_in_a_row
    metrics = jax.device_get(metrics)
    if metrics["finite"]:
      skips_in_a_row = 0
      writer.add({k: v for k, v in metrics.items() if k != "finite"})
      return
    problem = f"Non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']})"
    newest = f"The newest checkpoint is step {ckpt.manager.latest_step()}."
    if not skip_nonfinite:
      raise FloatingPointError(
        f"{problem} at step {step}; stopping without saving this state. {newest}"
      )
    skips_in_a_row += 1
    writer.count_nonfinite_skip()
    logging.warning(
      "%s at step %d: its update skipped (%d in a row).", problem, step, skips_in_a_row
    )
    if skips_in_a_row > training.max_nonfinite_skips:
      raise FloatingPointError(
        f"{problem} at {skips_in_a_row} steps in a row, up to step {step}: more than "
        f"training.max_nonfinite_skips={training.max_nonfinite_skips}; stopping. {newest}"
      )

  step, pending = start_step, None
  try:
    while step < total:
      state, metrics = train_step_fn(state, next(batches), rngs["train"])
      if pending is not None:  # checked one step late so that the host does not stall the device
        check(*pending)
      step += 1
      pending = (step, metrics)
      preempted = preemption.is_set(step)
      at_log = step % training.log_every_steps == 0 or step == total or preempted
      at_checkpoint = step % training.checkpoint_every_steps == 0 or step == total or preempted
      if at_log or at_checkpoint:  # this step is checked before anything is logged or saved from it
        check(*pending)
        pending = None
      if at_log:
        writer.write(step)
      if at_checkpoint:
        ckpt.save(step, state, config)
        writer.flush()
      if held_out_loss is not None and (step % training.eval_every_steps == 0 or step == total):
        loss = held_out_loss(state.ema_params)
        logging.info("step %d  held-out loss (EMA, %s) %.5f", step, config.data.eval_split, loss)
        writer.write_scalars("eval", {"loss": loss}, step)
      if sample_grids and (step % training.sample_every_steps == 0 or step == total):
        if family.represent is not None:  # the held-out images' codes under the current encoder
          grid_cond = sample_lib.batch_rows(sample_grid_cond(state.ema_params), 0, grid_batch)
        args = (state.ema_params, rngs["sample"], grid_cond, None, None, 0, None)
        if sample_fn is None:
          sample_fn = sample_lib.saved_sample_fn(config, family, grid_batch, mesh, args, None, None)
        samples = sample_fn(*args)
        samples = latent.images_of(autoencoder, samples)
        write_sample_grid(samples, config.sampling.num_samples, workdir, step, writer, grid_columns)
      if preempted:
        logging.warning(
          "Stopped for preemption at step %d; rerun the same command to resume.", step
        )
        break
  finally:
    ckpt.close()
    writer.close()
  return state


def write_sample_grid(
  samples: jax.Array,
  num_samples: int,
  workdir: str,
  step: int,
  writer: MetricWriter,
  columns: int | None = None,
) -> None:
  """The first `num_samples` EMA samples as a PNG grid in workdir/samples and in TensorBoard
  (written by process 0), one row per class where they are in class rows."""
  samples = parallel.to_host(samples)[:num_samples]  # a collective: every process takes part
  if jax.process_index() != 0:
    return
  grid = image_utils.grid_uint8(samples, columns=columns)
  path = image_utils.save_png(grid, os.path.join(workdir, "samples", f"ema_step_{step:08d}.png"))
  writer.write_image("samples/ema", grid, step)
  logging.info("Wrote %s.", path)
