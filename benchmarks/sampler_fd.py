r"""Sample quality per network evaluation on the offline digits: the default Gaussian model
(configs/default.py, ε-prediction), the EDM family (configs/edm_default.py) and the flow family
(configs/flow_default.py), trained with the same U-Net, steps, batch and seed, and the flow family
with the digits' DiT (configs/dit_default.py:flow), then sampled by every sampler at several NFE.
Each network's forward FLOPs per image (XLA's cost analysis) are printed beside it.

  python -m benchmarks.sampler_fd [--workdir=runs/sampler_fd] [--steps=3000] [--num_samples=500]
  python -m benchmarks.sampler_fd --quick   # minutes: a smoke run of every row, meaningless

Sample quality is the offline feature Fréchet distance to the test split
(evaluation/offline_metrics.py, as benchmarks/reproduce_small.py). Heun's n steps cost 2n - 1
evaluations. Reuses trained models in the workdir; prints progress and a markdown table and writes
results.json to the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.reproduce_small import START, Evaluator, log  # noqa: E402
from benchmarks.timing import machine_description  # noqa: E402
from configs import default, dit_default, edm_default, flow_default  # noqa: E402
from ddpm_jax import families, train  # noqa: E402
from ddpm_jax.families import base  # noqa: E402

# (row, model, sampler, steps): NFE = steps, or 2 steps - 1 for heun
ROWS = [
  *(("ancestral", "gaussian", "ddpm", n) for n in (10, 20, 50, 100)),
  *(("DDIM (η = 0)", "gaussian", "ddim", n) for n in (10, 20, 50, 100)),
  *(("DPM-Solver++(2M)", "gaussian", "dpm_solver", n) for n in (10, 20, 50)),
  *(("Heun, EDM grid", "gaussian", "heun", n) for n in (10, 18, 25, 50)),
  *(("EDM family, Heun", "edm", "heun", n) for n in (10, 18, 25, 50)),
  *(("flow family, Euler", "flow", "euler", n) for n in (10, 20, 50, 100)),
  *(("flow family, Heun", "flow", "heun", n) for n in (10, 18, 25, 50)),
  *(("flow family, DiT, Heun", "dit_flow", "heun", n) for n in (10, 18, 25, 50)),
]


def nfe(sampler: str, steps: int) -> int:
  return 2 * steps - 1 if sampler == "heun" else steps


def forward_flops(config) -> float:
  """FLOPs of one network evaluation on one image (XLA's cost analysis of a batch of 64)."""
  import jax

  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  x, _ = base.dummy_inputs(config.data)
  x = jax.numpy.zeros((64, *x.shape[1:]))
  t = jax.numpy.zeros((64,))
  compiled = jax.jit(family.model.apply).lower(params, x, t).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"]) / 64


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="runs/sampler_fd")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--num_samples", type=int, default=500)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.quick:
    args.steps, args.num_samples = 20, 50
  logging.set_verbosity(logging.WARNING)
  print(f"machine: {machine_description()}", flush=True)
  configs = {
    "gaussian": default.get_config(),
    "edm": edm_default.get_config(),
    "flow": flow_default.get_config(),
    "dit_flow": dit_default.get_config("flow"),
  }
  dirs, flops = {}, {name: forward_flops(config) for name, config in configs.items()}
  for name, config in configs.items():
    log(f"{name}: {flops[name] / 1e6:.1f} MFLOPs per image per evaluation")
    config.training.num_train_steps = args.steps
    config.training.eval_every_steps = config.training.sample_every_steps = args.steps
    config.training.checkpoint_every_steps = min(args.steps, 1000)
    dirs[name] = os.path.join(args.workdir, name)
    log(f"training {name} ({args.steps} steps)")
    train.train_and_evaluate(config, dirs[name])

  ev = Evaluator(args.num_samples)
  results = {}
  for row, model, sampler, steps in ROWS:
    out = ev.samples(configs[model], dirs[model], sampler=sampler, num_steps=steps)
    results.setdefault(row, {})[nfe(sampler, steps)] = out["feature_fd"]
  real = ev.real_data_fd()
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(
      {
        "feature_fd": results,
        "real_data_fd": real,
        "forward_flops": flops,
        "seconds": time.time() - START,
        "machine": machine_description(),
      },
      f,
    )
  print("\n| sampler | feature-FD at NFE |\n|---|---|")
  for row, by_nfe in results.items():
    print(f"| {row} | " + ", ".join(f"{fd:.2f} ({n})" for n, fd in by_nfe.items()) + " |")
  print(f"| real training digits (reference) | {real:.2f} |")
  print(f"\n{(time.time() - START) / 60:.0f} minutes in all.")


if __name__ == "__main__":
  main()
