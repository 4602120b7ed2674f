r"""Config sweeps: expand overrides into runs, name each run's workdir after its overrides, print or
run them.

  python -m launch.sweep --config configs/default.py --workdir_root runs/sweep \
      --sweep 'optim.lr=[1e-4,2e-4]' --sweep 'diffusion.loss_type=[mse,hybrid]'   # 4 runs (product)
  python -m launch.sweep ... --zip                                  # pair the lists instead
  python -m launch.sweep --config configs/default.py --sweep_file configs/sweeps/schedules.py --run

A sweep file defines `get_sweep()` returning a list of override dicts, e.g.
[{"diffusion.beta_schedule": "cosine"}]. Without --run the commands are printed (one per line,
shell-quoted) for a cluster launcher or `xargs`; with --run they run here one after another, and a
failed run stops the sweep. Extra arguments after `--` go to every run (e.g. `-- --mode=eval`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys
from typing import Any

Override = dict[str, Any]


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
  """'optim.lr=[1e-4,2e-4]' -> ("optim.lr", [1e-4, 2e-4]); values are Python literals, or bare words
  as strings ('[mse,hybrid]'); a single value without brackets is a one-element sweep."""
  key, sep, values = spec.partition("=")
  if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
    raise ValueError(f"A sweep is 'dotted.key=[v1,v2,...]'; got {spec!r}.")
  values = values.strip()
  if values.startswith("[") and values.endswith("]"):
    items = _split_top_level(values[1:-1])
  else:
    items = [values]
  if not items:
    raise ValueError(f"Sweep {spec!r} has no values.")
  return key.strip(), [_literal(item) for item in items]


def _split_top_level(text: str) -> list[str]:
  """Splits on commas outside brackets, parentheses and quotes: '1,(1,2),"a,b"' -> ['1', '(1,2)',
  '"a,b"']."""
  items, depth, quote, current = [], 0, None, ""
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      items.append(current.strip())
      current = ""
      continue
    current += char
  if current.strip():
    items.append(current.strip())
  return items


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string


def expand(sweeps: list[tuple[str, list[Any]]], zip_values: bool = False) -> list[Override]:
  """The product of the swept values (or, with `zip_values`, the i-th value of every sweep
  together)."""
  if not sweeps:
    return [{}]
  keys = [k for k, _ in sweeps]
  if len(set(keys)) != len(keys):
    raise ValueError(f"A key is swept twice: {keys}.")
  lists = [v for _, v in sweeps]
  if zip_values:
    if len({len(v) for v in lists}) != 1:
      raise ValueError(
        f"--zip needs sweeps of equal length; got {dict(zip(keys, map(len, lists)))}."
      )
    combos = zip(*lists)
  else:
    combos = itertools.product(*lists)
  return [dict(zip(keys, combo)) for combo in combos]


def run_name(overrides: Override) -> str:
  """A workdir name from the overrides: 'optim.lr=0.0001,diffusion.loss_type=mse' ->
  'lr=0.0001_loss_type=mse' (last key component; characters unsafe in paths replaced)."""
  if not overrides:
    return "base"
  parts = []
  for key, value in overrides.items():
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    parts.append(f"{key.split('.')[-1]}={text}")
  return re.sub(r"[^\w.=,+-]", "-", "_".join(parts))


def format_value(value: Any) -> str:
  """ml_collections' command-line syntax: tuples as '(1,2)', strings bare, booleans and numbers as
  Python."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def commands(
  config: str,
  workdir_root: str,
  runs: list[Override],
  extra_args: list[str] = (),
  python: str = sys.executable,
) -> list[list[str]]:
  """One `python -m ddpm_jax.main` argument list per run, workdir = workdir_root/run_name."""
  names = [run_name(r) for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"Two runs would share a workdir: {names}.")
  return [
    [
      python,
      "-m",
      "ddpm_jax.main",
      f"--config={config}",
      f"--workdir={os.path.join(workdir_root, name)}",
      *(f"--config.{k}={format_value(v)}" for k, v in run.items()),
      *extra_args,
    ]
    for run, name in zip(runs, names)
  ]


def load_sweep_file(path: str) -> list[Override]:
  spec = importlib.util.spec_from_file_location("sweep_definition", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  runs = module.get_sweep()
  if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
    raise ValueError(f"{path}: get_sweep() must return a list of override dicts.")
  return runs


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  extra = []
  if "--" in argv:
    argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir_root", default="runs/sweep")
  parser.add_argument(
    "--sweep", action="append", default=[], help="'dotted.key=[v1,v2]' (repeatable)"
  )
  parser.add_argument(
    "--zip", action="store_true", help="pair the sweeps' values instead of their product"
  )
  parser.add_argument(
    "--sweep_file", help="a python file whose get_sweep() returns a list of override dicts"
  )
  parser.add_argument("--run", action="store_true", help="run the commands here, one after another")
  args = parser.parse_args(argv)
  runs = expand([parse_sweep(s) for s in args.sweep], args.zip)
  if args.sweep_file:  # each run of the file, combined with each command-line combination
    runs = [{**file_run, **run} for file_run in load_sweep_file(args.sweep_file) for run in runs]
  cmds = commands(args.config, args.workdir_root, runs, extra)
  for i, cmd in enumerate(cmds):
    print(shlex.join(cmd), flush=True)
    if args.run:
      print(f"[sweep] run {i + 1} / {len(cmds)}", file=sys.stderr, flush=True)
      result = subprocess.run(cmd)
      if result.returncode:
        print(
          f"[sweep] run {i + 1} failed with exit code {result.returncode}; stopping.",
          file=sys.stderr,
        )
        return result.returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
