"""The one train state of every family, its initialisation and its placement on the device mesh."""

from __future__ import annotations

from typing import Any

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import families
from ddpm_jax.runtime import checkpoint, executables, optim, parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  ema_params: Any
  opt_state: Any
  # what the family carries across steps (the loss history of importance-sampled t)
  family_state: Any = None


def init_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Fresh parameters (EMA starts equal to them), optimizer state and the family's own state, as a
  traceable function (`jax.eval_shape` of it is the restore target)."""
  family = families.get_family(config)
  params = family.init_params(rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=params,
    opt_state=optim.make_optimizer(config.optim, family.clip_mask).init(params),
    family_state=family.init_state(params),
  )


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh=None) -> TrainState:
  """`init_train_state` compiled and placed on `mesh` (default: all devices) with the shardings of
  `train.make_train_step`, each leaf its own buffer (params and EMA are not shared): it goes into
  the step as it is, and the step compiles once."""
  return compiled_init(config, mesh or parallel.make_mesh(), rng)(rng)


def compiled_init(config: ml_collections.ConfigDict, mesh, rng: jax.Array):
  """`create_train_state`'s initialisation compiled (a `jax.stages.Compiled`), loaded where a
  restarted job saved it (runtime/executables.py)."""
  return executables.compiled(
    lambda: _jitted_init(config, mesh), (rng,), "init", config_key(config)
  )


def config_key(config: ml_collections.ConfigDict) -> str:
  """The config as sorted JSON: what besides the arguments' shapes changes a run's programs."""
  return config.to_json_best_effort(sort_keys=True)


# (the config as JSON, mesh) -> its jitted initialisation. Tracing a large model's initialisation
# takes seconds; one trace serves the abstract state (of create_train_state, make_train_step and
# the restore) and the compilation.
_INITS: dict[tuple[str, Any], Any] = {}


def _jitted_init(config: ml_collections.ConfigDict, mesh):
  key = (config_key(config), mesh)
  if key not in _INITS:

    def init(rng):
      state = init_train_state(config, rng)
      shardings = parallel.state_shardings(state, mesh, config.training.fsdp)
      return jax.lax.with_sharding_constraint(state, shardings)

    _INITS[key] = jax.jit(init)
  return _INITS[key]


def abstract_train_state(config: ml_collections.ConfigDict, mesh):
  """Shapes, dtypes and shardings of the train state, without allocating it (the target of a
  restore)."""
  abstract = _jitted_init(config, mesh).eval_shape(jax.random.key(0))
  shardings = parallel.state_shardings(abstract, mesh, config.training.fsdp)
  return jax.tree_util.tree_map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def state_sharding(config: ml_collections.ConfigDict, mesh):
  return jax.tree_util.tree_map(lambda a: a.sharding, abstract_train_state(config, mesh))


def run_rngs(seed: int) -> dict[str, jax.Array]:
  """The keys of a run: parameter initialisation, the train steps (folded with the step), EMA
  samples, and the held-out loss evaluations (the same draws at every evaluation, so that they
  compare)."""
  root = jax.random.key(seed)
  return dict(
    zip(("init", "train", "sample"), jax.random.split(root, 3)), eval=jax.random.fold_in(root, 1)
  )


def warm_started(config: ml_collections.ConfigDict, state: TrainState, mesh) -> TrainState:
  """A fresh `state` whose params, EMA and family state start from the EMA parameters of the run
  in training.init_from_workdir (as they are where that is unset)."""
  source = config.training.get("init_from_workdir")
  if not source:
    return state
  from configs import workdir as workdir_configs

  params, step = restore_ema_params(workdir_configs.load(source), source, mesh)
  logging.info("Starting from the EMA parameters of %s at step %d.", source, step)
  family = families.get_family(config)

  def start(params):  # traced: each leaf its own buffer
    copy = lambda: jax.tree_util.tree_map(jnp.copy, params)
    return state.replace(params=copy(), ema_params=copy(), family_state=family.init_state(copy()))

  shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
  return jax.jit(start, out_shardings=shardings)(params)


def restore_ema_params(
  config: ml_collections.ConfigDict, workdir: str, mesh, step: int | None = None
):
  """-> (EMA parameters, step) of the newest readable checkpoint of the run `config` in
  `workdir` (`step`: of that step's)."""
  ckpt = checkpoint.Checkpointer(workdir)
  state, step = ckpt.restore_latest(abstract_train_state(config, mesh), config, step)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first (--mode=train).")
  return state.ema_params, step
