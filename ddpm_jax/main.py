"""Command line entry point: parses flags and hands the config to the job.

  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default [--mode=train]
"""
from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to run.")
config_flags.DEFINE_config_file("config", None, "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ddpm_jax import train  # imported here so that `--help` needs no accelerator set-up
  {"train": train.train_and_evaluate}[FLAGS.mode](FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
