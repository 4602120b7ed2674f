"""Tiny training set-ups shared by the tests, and a command line for the multi-device/-process
subprocesses:

  python tests/helpers.py steps OUT.npz [--fsdp]     # a few train steps, final params to OUT.npz
  python tests/helpers.py train WORKDIR STEPS [ADDR NPROC PID]  # train_and_evaluate (multi-process)
"""

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_train_steps=12, batch_size=16, family="gaussian"):
  sys.path.insert(0, REPO)
  from configs import default

  config = default.get_config(family)
  config.data.image_size = 8
  # decoding in this process: tests that switch to a file-backed dataset under tfds mock data
  # (which spawned workers do not see) or want the workers set it
  config.data.num_workers = 0
  config.model.ch = 32
  # one resolution: half the layers of the default config, half the compile time
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  if "diffusion" in config:  # the Gaussian diffusion families'
    config.diffusion.num_timesteps = 50
  config.optim.warmup_steps = 0
  config.training.batch_size = batch_size
  config.training.num_train_steps = num_train_steps
  config.training.log_every_steps = 4
  config.training.checkpoint_every_steps = 4
  config.training.eval_every_steps = 1000
  config.training.sample_every_steps = 1000
  config.eval.num_loss_batches = 0  # no held-out loss: tests that want it set this
  config.sampling.num_samples = 0  # no sample grids: tests that want them set this
  config.sampling.num_steps = 5
  return config


def flat_params(params):
  import jax

  return {
    jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }


def run_steps(config, num_steps):
  """`num_steps` train steps from a fresh state on the first batches of the pipeline -> final
  state."""
  import jax

  from ddpm_jax import train
  from ddpm_jax.data import loader
  from ddpm_jax.runtime import parallel

  mesh = parallel.make_mesh()
  state = train.create_train_state(config, jax.random.key(0), mesh)
  step_fn = train.make_train_step(config, mesh)
  losses = []
  for batch in loader.batches(
    config.data,
    split="train",
    global_batch_size=config.training.batch_size,
    seed=0,
    num_steps=num_steps,
  ):
    state, metrics = step_fn(
      state, parallel.global_batch(batch, parallel.data_sharding(mesh)), jax.random.key(1)
    )
    losses.append(float(metrics["loss"]))
  return state, losses


if __name__ == "__main__":
  command = sys.argv[1]
  if command == "steps":
    config = tiny_config()
    config.training.fsdp = "--fsdp" in sys.argv
    state, _ = run_steps(config, 3)
    np.savez(sys.argv[2], **flat_params(state.params))
  elif command == "train":
    workdir, steps = sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
      import jax

      jax.distributed.initialize(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    from jax.experimental import multihost_utils

    from ddpm_jax import train

    state = train.train_and_evaluate(tiny_config(num_train_steps=steps), workdir)
    params = (
      multihost_utils.process_allgather(state.params, tiled=True)
      if len(sys.argv) > 4
      else state.params
    )
    import jax

    np.savez(os.path.join(workdir, f"params_{jax.process_index()}.npz"), **flat_params(params))


def with_random_zero_layers(params, seed: int = 5, scale: float = 0.1):
  """`params` with every all-zero array (a fresh U-Net's output layers) drawn at random: otherwise
  the network outputs zero and every sampler agrees."""
  import jax
  import jax.numpy as jnp

  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [
    p if jnp.any(p != 0) else scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)
  ]
  return jax.tree_util.tree_unflatten(tree, leaves)


def run_module(*args) -> str:
  """`python -m ARGS` on the CPU in the repository; fails the test with its stderr's end. -> its
  stderr (the logs)."""
  import subprocess

  result = subprocess.run(
    [sys.executable, "-m", *args],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr
