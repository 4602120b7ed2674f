r"""Command line entry point: parses flags, sets up the (multi-host) platform and hands the config
to the job.

python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default [--mode=train]
python -m ddpm_jax.main --config=ddpm_cifar10 --workdir=...   # a shipped config by name
python -m ddpm_jax.main --config=configs/ddpm_cifar10.py --workdir=gs://bucket/run \
    --config.training.batch_size=256
"""

import importlib.util
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ddpm_jax.runtime import host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "sample", "eval", "edit", "interpolate", "represent", "variations", "reflow"],
  "train; sample, eval (FID, IS, bits/dim), edit (config.edit: inpaint, colorize, sdedit), "
  "interpolate (config.interpolate: DDIM latents), represent (a representation's codes of "
  "representation.split), variations (config.variations: an embedding decoded from several "
  "noises) or reflow (a flow's (noise, ODE image) pairs for data.dataset='reflow') with the "
  "newest checkpoint.",
)
config_flags.DEFINE_config_file("config", None, "Training configuration.", lock_config=True)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0 for multi-host runs (auto-detected on TPU pods and SLURM when unset).",
)
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_enum(
  "host_allocator",
  "default",
  host_memory.HOST_ALLOCATORS,
  "CPU hosts: the malloc behind XLA:CPU's per-step temporaries (ddpm_jax/runtime/host_memory.py); "
  "'tbbmalloc' (extra `cpu`), the fastest of the three, restarts the process with it preloaded.",
)
flags.DEFINE_string(
  "compilation_cache_dir",
  None,
  "JAX's persistent compilation cache (local or gs://), so that a restart does not compile again, "
  "with the serialised train step and initialisation in its executables/ (nor trace them); "
  "default: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/ddpm_jax/jax_cache; '' disables both.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # may restart the process: before anything else
  host_memory.use_host_allocator(FLAGS.host_allocator)
  # Imported here so that `--help` stays instant (and the restart above cheap).
  from ddpm_jax import families
  from ddpm_jax.families.config_validation import InvalidConfigError
  from ddpm_jax.jobs import edit, evaluate, represent, sample, train
  from ddpm_jax.runtime import parallel

  parallel.use_compilation_cache(FLAGS.compilation_cache_dir)
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  jobs = {
    "train": train.train_and_evaluate,
    "sample": sample.sample,
    "eval": evaluate.evaluate,
    "edit": edit.edit,
    "interpolate": edit.interpolate,
    "represent": represent.represent,
    "variations": edit.variations,
    "reflow": sample.reflow,
  }
  try:
    jobs[FLAGS.mode](families.completed(FLAGS.config), FLAGS.workdir)
  except InvalidConfigError as error:  # the user's to fix: the message alone, no traceback
    sys.exit(f"{error}")


def shipped_config_paths(argv: list[str]) -> list[str]:
  """argv with `--config=NAME[:…]` (a shipped config, e.g. `ddpm_cifar10`, no such file here)
  replaced by the installed file configs/NAME.py, so that a package installed without a checkout
  runs its configs by name."""
  out = []
  for arg in argv:
    if arg.startswith("--config=") and "." not in arg.split(":", 1)[0].rsplit("/", 1)[-1]:
      name, _, rest = arg[len("--config=") :].partition(":")
      spec = None if os.path.exists(name) else importlib.util.find_spec(f"configs.{name}")
      if spec is not None and spec.origin:
        arg = f"--config={spec.origin}" + (f":{rest}" if rest else "")
    out.append(arg)
  return out


if __name__ == "__main__":
  sys.argv = shipped_config_paths(sys.argv)
  app.run(main)
