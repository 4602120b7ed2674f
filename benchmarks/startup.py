"""Start-up cost: seconds from a fresh process to its first train step and to its first batch of
samples, with JAX's persistent compilation cache cold (empty) and warm (filled by the cold run,
with the train step's, initialisation's and sampler's serialised executables,
runtime/executables.py), and the warm start's floor: imports, loading the executables and their
first runs.

  python -m benchmarks.startup [--setups=default,cifar10] [--sample_steps=10] [--json]

Each measurement is a new Python process, as a restarted job is. "default" is configs/default.py on
the digits through the input pipeline (batch 64); "cifar10" is the CIFAR-10 U-Net of
configs/ddpm_cifar10.py on a random batch of 8 (the dataset is not needed to measure compilation).
The first sample batch is 8 images by DDIM with --sample_steps steps. --json prints one object per
setup per line: setup, cold_s, warm_s and floor_s (to the first train step), and the parts.
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
  """In this process: -> seconds since start to the first train step and to the first samples, and
  the floor's parts (imports, executables' loading, their first runs)."""
  import jax
  import numpy as np

  from configs import ddpm_cifar10, default
  from ddpm_jax import families
  from ddpm_jax.data import loader
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.jobs.train import compiled_train_step
  from ddpm_jax.jobs.train_state import compiled_init
  from ddpm_jax.runtime import executables, parallel

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
  mesh = parallel.make_mesh()

  def first_run(fn, *args):  # -> (outputs, seconds)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start

  init = compiled_init(config, mesh, jax.random.key(0))  # create_train_state's two parts
  state, init_run = first_run(init, jax.random.key(0))
  step = compiled_train_step(config, mesh, state, batch, jax.random.key(1))
  (state, _), step_run = first_run(step, state, batch, jax.random.key(1))
  first_step, step_loads = time.perf_counter() - START, executables.load_seconds
  family = families.get_family(config)
  args = (state.ema_params, jax.random.key(2), None, None, None, 0, None)  # (as generate's)
  sample_fn = sample_lib.saved_sample_fn(config, family, 8, mesh, args, None, None)
  _, sample_run = first_run(sample_fn, *args)
  first_samples = time.perf_counter() - START
  floor = imported + step_loads + init_run + step_run
  sampler_load = executables.load_seconds - step_loads
  return {
    "imports": imported,
    "first_train_step": first_step,
    "first_samples": first_samples,
    "executable_loads": step_loads,
    "first_runs": init_run + step_run,
    "floor": floor,
    "sampler_load": sampler_load,
    # the samples' floor: the train step's, the sampler's load and its first run
    "samples_floor": floor + sampler_load + sample_run,
  }


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
  parser.add_argument("--json", action="store_true", help="one JSON object per setup per line")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    from ddpm_jax.runtime import parallel

    parallel.use_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])
    print(json.dumps(measure(args.child, args.sample_steps)))
    return
  from benchmarks.timing import machine_description

  if not args.json:
    print(f"machine: {machine_description()}", flush=True)
    print("setup     cache  imports  first train step  first samples  floor  (seconds from start)")
  for setup in args.setups.split(","):
    with tempfile.TemporaryDirectory() as cache_dir:
      cold, warm = (run(setup, args.sample_steps, cache_dir) for _ in range(2))
    if args.json:
      line = {
        "setup": setup,
        "cold_s": cold["first_train_step"],
        "warm_s": warm["first_train_step"],
      }
      line |= {"floor_s": warm["floor"], "cold": cold, "warm": warm}
      print(json.dumps(line), flush=True)
      continue
    for name, result in (("cold", cold), ("warm", warm)):
      print(
        f"{setup:9s} {name:5s} {result['imports']:8.1f} {result['first_train_step']:17.1f} "
        f"{result['first_samples']:14.1f} {result['floor']:6.1f}",
        flush=True,
      )
    step_ratio = warm["first_train_step"] / cold["first_train_step"]
    print(
      f"{setup:9s} warm/cold: first train step {step_ratio:.2f}, "
      f"first samples {warm['first_samples'] / cold['first_samples']:.2f}; warm / floor "
      f"{warm['first_train_step'] / warm['floor']:.2f} (imports {warm['imports']:.1f}, executable "
      f"loads {warm['executable_loads']:.1f}, first runs {warm['first_runs']:.1f}); first "
      f"samples warm / floor {warm['first_samples'] / warm['samples_floor']:.2f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
