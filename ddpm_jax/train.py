"""The training API (DESIGN.md); its implementation is in `ddpm_jax.jobs`.

state = train.create_train_state(config, rng)   # .step .params .ema_params .opt_state
step_fn = train.make_train_step(config)          # jitted: (state, batch, rng) -> (state, metrics)
train.train_and_evaluate(config, workdir)        # resumes from workdir if a checkpoint is there
"""

from ddpm_jax.jobs.train import make_train_step, train_and_evaluate, train_step
from ddpm_jax.jobs.train_state import TrainState, create_train_state, run_rngs, state_sharding

__all__ = [
  "TrainState",
  "create_train_state",
  "make_train_step",
  "run_rngs",
  "state_sharding",
  "train_and_evaluate",
  "train_step",
]
