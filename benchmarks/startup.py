"""Start-up cost: seconds from a fresh process to its first train step and to its first batch of
samples, with JAX's persistent compilation cache cold (empty) and warm (filled by the cold run).

  python -m benchmarks.startup [--setups=default,cifar10] [--sample_steps=10]

Each measurement is a new Python process, as a restarted job is. "default" is configs/default.py on
the digits through the input pipeline (batch 64); "cifar10" is the CIFAR-10 U-Net of
configs/ddpm_cifar10.py on a random batch of 8 (the dataset is not needed to measure compilation).
The first sample batch is 8 images by DDIM with --sample_steps steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()

SETUPS = ("default", "cifar10")


def measure(setup: str, sample_steps: int) -> dict[str, float]:
  """In this process: -> seconds since start to the first train step and to the first samples."""
  import jax
  import numpy as np

  from configs import ddpm_cifar10, default
  from ddpm_jax import families, train
  from ddpm_jax.data import loader
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.runtime import parallel

  imported = time.perf_counter() - START
  config = (default if setup == "default" else ddpm_cifar10).get_config()
  config.sampling.sampler, config.sampling.num_steps = "ddim", sample_steps
  if setup == "default":
    batch = next(
      loader.batches(config.data, split="train", global_batch_size=64, seed=0, num_steps=1)
    )
  else:
    config.training.batch_size = 8
    size, channels = config.data.image_size, config.data.num_channels
    images = np.random.default_rng(0).uniform(-1, 1, (8, size, size, channels)).astype(np.float32)
    batch = {"image": images, "label": np.zeros(8, np.int32)}
  state = train.create_train_state(config, jax.random.key(0))
  step_fn = train.make_train_step(config)
  state, metrics = step_fn(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  first_step = time.perf_counter() - START
  sample_fn = sample_lib.make_sample_fn(families.get_family(config), 8, parallel.make_mesh())
  jax.block_until_ready(sample_fn(state.ema_params, jax.random.key(2), None))
  first_samples = time.perf_counter() - START
  return {"imports": imported, "first_train_step": first_step, "first_samples": first_samples}


def run(setup: str, sample_steps: int, cache_dir: str) -> dict[str, float]:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
  command = [sys.executable, "-m", "benchmarks.startup", "--child", setup]
  command += [f"--sample_steps={sample_steps}"]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--setups", default=",".join(SETUPS))
  parser.add_argument("--sample_steps", type=int, default=10)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    from ddpm_jax.runtime import parallel

    parallel.use_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])
    print(json.dumps(measure(args.child, args.sample_steps)))
    return
  from benchmarks.timing import machine_description

  print(f"machine: {machine_description()}", flush=True)
  print("setup     cache  imports  first train step  first samples   (seconds from process start)")
  for setup in args.setups.split(","):
    with tempfile.TemporaryDirectory() as cache_dir:
      cold, warm = (run(setup, args.sample_steps, cache_dir) for _ in range(2))
    for name, result in (("cold", cold), ("warm", warm)):
      print(
        f"{setup:9s} {name:5s} {result['imports']:8.1f} {result['first_train_step']:17.1f} "
        f"{result['first_samples']:14.1f}",
        flush=True,
      )
    ratios = {k: warm[k] / cold[k] for k in ("first_train_step", "first_samples")}
    print(
      f"{setup:9s} warm/cold: first train step {ratios['first_train_step']:.2f}, "
      f"first samples {ratios['first_samples']:.2f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
