"""One task of a SLURM job (one process per GPU): reads SLURM's environment, picks this task's GPU,
and runs `ddpm_jax.main` with explicit `jax.distributed` coordinates. Used by launch/slurm.sbatch:

  srun python -m launch.slurm -- --config=configs/ddpm_cifar10.py --workdir=/shared/runs/cifar10

The coordinator is the first host of SLURM_JOB_NODELIST on a port derived from the job id (the same
in every task); process id = SLURM_PROCID, count = SLURM_NTASKS; CUDA_VISIBLE_DEVICES =
SLURM_LOCALID unless SLURM already bound one GPU to the task.
"""

from __future__ import annotations

import os
import re
import sys


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03', 'node7,node8' ->
  'node7'."""
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not match:
    raise ValueError(f"Cannot parse SLURM node list {nodelist!r}.")
  prefix, ranges = match.groups()
  if ranges is None:
    return prefix
  return prefix + ranges.split(",")[0].split("-")[0]


def task_command(
  env: dict[str, str], main_args: list[str], python: str = sys.executable
) -> tuple[list[str], dict[str, str]]:
  """(argument list, environment) of this task from SLURM's variables."""
  try:
    nodelist = env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"]
    num_tasks, task_id, job_id = (
      int(env["SLURM_NTASKS"]),
      int(env["SLURM_PROCID"]),
      int(env["SLURM_JOB_ID"]),
    )
  except KeyError as e:
    raise RuntimeError(
      f"{e.args[0]} is not set: run this under srun inside a SLURM allocation."
    ) from None
  port = 12000 + job_id % 20000  # the same in every task of the job, different for concurrent jobs
  task_env = dict(env)
  if "CUDA_VISIBLE_DEVICES" not in env or "," in env["CUDA_VISIBLE_DEVICES"]:
    task_env["CUDA_VISIBLE_DEVICES"] = env.get("SLURM_LOCALID", "0")
  command = [
    python,
    "-m",
    "ddpm_jax.main",
    *main_args,
    f"--coordinator_address={first_host(nodelist)}:{port}",
    f"--num_processes={num_tasks}",
    f"--process_id={task_id}",
  ]
  return command, task_env


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  main_args = argv[argv.index("--") + 1 :] if "--" in argv else argv
  command, env = task_command(dict(os.environ), main_args)
  os.execvpe(command[0], command, env)


if __name__ == "__main__":
  main()
