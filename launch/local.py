"""N processes of one job on this machine, coordinated by `jax.distributed` on localhost — the
multi-host code path without a cluster (CPU: each process sees `--devices_per_process` XLA host
devices).

  python -m launch.local --num_processes=2 -- --config=configs/default.py --workdir=runs/two_hosts

Output lines are prefixed with the process index; if one process fails the others are stopped and
the launcher exits with its code.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_commands(
  num_processes: int,
  port: int,
  main_args: list[str],
  devices_per_process: int = 1,
  python: str = sys.executable,
  env: dict[str, str] | None = None,
) -> list[tuple[list[str], dict[str, str]]]:
  """(argument list, environment) of each process."""
  base = dict(os.environ if env is None else env)
  base["XLA_FLAGS"] = " ".join(
    f
    for f in base.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  base["XLA_FLAGS"] = (
    base["XLA_FLAGS"] + f" --xla_force_host_platform_device_count={devices_per_process}"
  ).strip()
  base.setdefault("JAX_PLATFORMS", "cpu")
  return [
    (
      [
        python,
        "-m",
        "ddpm_jax.main",
        *main_args,
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
      ],
      base,
    )
    for i in range(num_processes)
  ]


def _stream(index: int, pipe) -> None:
  for line in pipe:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def run(commands: list[tuple[list[str], dict[str, str]]]) -> int:
  procs = [
    subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for cmd, env in commands
  ]
  threads = [
    threading.Thread(target=_stream, args=(i, p.stdout), daemon=True) for i, p in enumerate(procs)
  ]
  for t in threads:
    t.start()
  code = 0
  try:
    pending = list(procs)
    while pending:
      for p in list(pending):
        try:
          rc = p.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        pending.remove(p)
        if rc and not code:
          code = rc
          for other in pending:  # a collective would wait for the failed process forever
            other.terminate()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for t in threads:
      t.join(timeout=5)
  return code


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    raise SystemExit("usage: python -m launch.local --num_processes=N -- <ddpm_jax.main flags>")
  ours, main_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  args = parser.parse_args(ours)
  return run(
    process_commands(
      args.num_processes, args.port or free_port(), main_args, args.devices_per_process
    )
  )


if __name__ == "__main__":
  sys.exit(main())
