r"""TPU VM pods: start the same training command on every worker (`--worker=all`) with the workdir
on a bucket, and keep it going through preemptions.

  python -m launch.tpu_pod --tpu=my-pod --zone=us-central2-b --accelerator=v4-32 --spot \
      --config=configs/ddpm_cifar10.py --workdir=gs://my-bucket/ddpm_cifar10 [--dry_run] [--
      --config.x=y ...]

Loop: if the TPU is missing, preempted or terminated, (re)create it and install the project on every
worker; run the training on all workers; exit when it succeeds. A rerun resumes from the newest
checkpoint in the bucket, so a preemption costs at most `checkpoint_every_steps` steps. --dry_run
prints the commands.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def num_workers(accelerator: str) -> int:
  """Hosts of a TPU slice. v2/v3/v4/v5p: the suffix counts TensorCores, 8 per host (4 chips × 2 for
  v4/v5p); v5litepod/v6e: it counts chips, one host up to 8 chips, else 4 chips per host."""
  match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator)
  if not match:
    raise ValueError(
      f"Unknown accelerator type {accelerator!r} (e.g. v3-8, v4-32, v5p-64, v5litepod-16)."
    )
  kind, size = match.group(1), int(match.group(2))
  if kind in ("v5litepod", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


def num_devices(accelerator: str) -> int:
  """JAX devices of the slice: one per TensorCore on v2/v3, one per chip (2 TensorCores) on v4/v5p,
  one per chip on v5litepod/v6e."""
  num_workers(accelerator)  # validates the name
  kind, size = accelerator.split("-")
  return int(size) // 2 if kind in ("v4", "v5p") else int(size)


def jax_version() -> str:
  with open(os.path.join(REPO, "requirements.txt")) as f:
    for line in f:
      if line.startswith("jax=="):
        return line.strip().split("==")[1]
  raise RuntimeError("requirements.txt pins no jax version.")


def gcloud_ssh(tpu: str, zone: str, command: str) -> list[str]:
  return [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    tpu,
    f"--zone={zone}",
    "--worker=all",
    f"--command={command}",
  ]


def create_command(args) -> list[str]:
  cmd = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    args.tpu,
    f"--zone={args.zone}",
    f"--accelerator-type={args.accelerator}",
    f"--version={args.runtime}",
  ]
  return cmd + (["--spot"] if args.spot else [])


def setup_command(args) -> list[str]:
  # The workdir is a gs:// path (checked in parse_args): etils.epath needs gcsfs to write it.
  install = (
    f"(git clone {shlex.quote(args.repo_url)} ddpm_jax || git -C ddpm_jax pull) && cd ddpm_jax && "
    f"pip install -r requirements.txt -e '.[gcs]' 'jax[tpu]=={jax_version()}'"
  )
  return gcloud_ssh(args.tpu, args.zone, install)


def train_command(args, extra: list[str]) -> list[str]:
  main = [
    "python3",
    "-m",
    "ddpm_jax.main",
    f"--config={args.config}",
    f"--workdir={args.workdir}",
    *extra,
  ]
  return gcloud_ssh(args.tpu, args.zone, "cd ddpm_jax && " + shlex.join(main))


def load_config(path: str, overrides: list[str]):
  """The config as main.py would see it: `path` plus its `--config.key=value` overrides
  (ml_collections reads the override names from sys.argv when the flag is defined, so argv is set
  for the duration)."""
  from absl import flags
  from ml_collections import config_flags

  argv = ["main", f"--config={path}", *[a for a in overrides if a.startswith("--config.")]]
  saved, sys.argv = sys.argv, argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv)
    fv(argv)
    return fv.config
  finally:
    sys.argv = saved


def check_batch_size(args, extra: list[str]) -> None:
  """The global batch must split over the slice's devices; checked before any TPU time is spent."""
  batch, devices = (
    load_config(args.config, extra).training.batch_size,
    num_devices(args.accelerator),
  )
  if batch % devices:
    raise ValueError(
      f"training.batch_size={batch} does not split over the {devices} devices of "
      f"{args.accelerator}."
    )


def tpu_state(args, run=subprocess.run) -> str | None:
  result = run(
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "describe",
      args.tpu,
      f"--zone={args.zone}",
      "--format=value(state)",
    ],
    capture_output=True,
    text=True,
  )
  return result.stdout.strip() if result.returncode == 0 else None


def resume_loop(args, extra: list[str], run=subprocess.run, sleep=time.sleep) -> int:
  """(Re)create, set up and train until the training command succeeds or `max_restarts` is spent."""
  for attempt in range(args.max_restarts + 1):
    state = tpu_state(args, run)
    if state != "READY":
      # PREEMPTED / TERMINATED: a spot TPU cannot be restarted, only recreated
      if state is not None:
        run(
          [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "delete",
            args.tpu,
            f"--zone={args.zone}",
            "--quiet",
          ]
        )
      if run(create_command(args)).returncode or run(setup_command(args)).returncode:
        print(
          f"[tpu_pod] could not create/set up {args.tpu}; retrying in {args.retry_s} s",
          file=sys.stderr,
        )
        sleep(args.retry_s)
        continue
    if run(train_command(args, extra)).returncode == 0:
      return 0
    print(
      f"[tpu_pod] training stopped (attempt {attempt + 1}); resuming from the newest checkpoint",
      file=sys.stderr,
    )
    sleep(args.retry_s)
  return 1


def parse_args(argv: list[str]):
  extra = []
  if "--" in argv:
    argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--tpu", required=True)
  parser.add_argument("--zone", required=True)
  parser.add_argument("--accelerator", required=True, help="e.g. v4-32")
  parser.add_argument("--runtime", default="tpu-ubuntu2204-base", help="TPU VM software version")
  parser.add_argument("--spot", action="store_true")
  parser.add_argument("--config", required=True)
  parser.add_argument(
    "--workdir", required=True, help="a gs:// path: every worker reads and writes it"
  )
  parser.add_argument(
    "--repo_url", default=None, help="what the workers clone (default: this checkout's origin)"
  )
  parser.add_argument("--max_restarts", type=int, default=100)
  parser.add_argument("--retry_s", type=float, default=60.0)
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args(argv)
  if not args.workdir.startswith("gs://"):
    parser.error("--workdir must be a gs:// bucket path: every worker of the pod writes to it.")
  if args.repo_url is None:
    origin = subprocess.run(
      ["git", "-C", REPO, "remote", "get-url", "origin"], capture_output=True, text=True
    )
    if origin.returncode:
      parser.error(
        "--repo_url is needed: this checkout has no git remote 'origin' for the workers to clone."
      )
    args.repo_url = origin.stdout.strip()
  return args, extra


def main(argv: list[str] | None = None) -> int:
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  check_batch_size(args, extra)
  print(
    f"[tpu_pod] {args.accelerator}: {num_workers(args.accelerator)} workers, "
    f"{num_devices(args.accelerator)} devices",
    file=sys.stderr,
  )
  if args.dry_run:
    for cmd in (create_command(args), setup_command(args), train_command(args, extra)):
      print(shlex.join(cmd))
    return 0
  return resume_loop(args, extra)


if __name__ == "__main__":
  sys.exit(main())
