"""The one train state of every family, its initialisation and its placement on the device mesh."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import families, optim, parallel


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
    family_state=family.init_state(),
  )


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh=None) -> TrainState:
  """`init_train_state` compiled and placed on `mesh` (default: all devices) with the shardings of
  `train.make_train_step`, each leaf its own buffer (params and EMA are not shared): it goes into
  the step as it is, and the step compiles once."""
  mesh = mesh or parallel.make_mesh()
  init = jax.jit(
    functools.partial(init_train_state, config), out_shardings=state_sharding(config, mesh)
  )
  return init(rng)


# (the config as JSON, mesh) -> its abstract train state: tracing a large model's initialisation
# takes seconds, and create_train_state, make_train_step and the restore each need the same one.
_ABSTRACT_STATES: dict[tuple[str, Any], Any] = {}


def abstract_train_state(config: ml_collections.ConfigDict, mesh):
  """Shapes, dtypes and shardings of the train state, without allocating it (the target of a
  restore)."""
  key = (config.to_json_best_effort(sort_keys=True), mesh)
  if key not in _ABSTRACT_STATES:
    _ABSTRACT_STATES[key] = _trace_abstract_train_state(config, mesh)
  return _ABSTRACT_STATES[key]


def _trace_abstract_train_state(config: ml_collections.ConfigDict, mesh):
  abstract = jax.eval_shape(functools.partial(init_train_state, config), jax.random.key(0))
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
