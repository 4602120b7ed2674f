r"""Few-step students against their teacher's solvers on the offline digits: sample quality and
wall-clock per sample at 1, 2, 4 and 8 network evaluations.

  python -m benchmarks.distill_fd [--workdir=runs/distill_fd] [--steps=3000] \
      [--round_steps=500] [--num_samples=500] [--mean_type=eps|v|x0] [--students=progressive,cd,ct]
  python -m benchmarks.distill_fd --quick   # minutes: a smoke run of every row, meaningless

Trains (or reuses, in the workdir) the default teacher (configs/default.py, ε-prediction) and from
it: progressive distillation in 6 rounds of --round_steps steps from 64 DDIM steps to 1
(configs/distill_progressive_default.py; the student of the round that ends with n steps is the
checkpoint of that round's end), consistency distillation (configs/consistency_default.py) and,
without a teacher, consistency training (configs/consistency_default.py:training). Then samples the
teacher by DDIM (η = 0) on the trailing grid the progressive students use and by DPM-Solver++(2M)
on its log-SNR grid (from 2 steps), and each student at the same number of network evaluations
(NFE). Sample quality is the offline feature Fréchet distance to the test split
(evaluation/offline_metrics.py); wall-clock per sample is the sampler's second (compiled) call on
--num_samples samples in one batch. Prints progress and a markdown table and writes results.json to
the workdir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from absl import logging
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.reproduce_small import START, Evaluator, log  # noqa: E402
from benchmarks.timing import machine_description  # noqa: E402
from configs import consistency_default, default, distill_progressive_default  # noqa: E402
from ddpm_jax import families, train  # noqa: E402
from ddpm_jax.evaluation import offline_metrics  # noqa: E402
from ddpm_jax.jobs import sample as sample_lib  # noqa: E402

NFES = (1, 2, 4, 8)
TEACHER_STEPS = 64  # the progressive rounds' start: 6 rounds to one step
ROUNDS = int(math.log2(TEACHER_STEPS))


def run_configs(args, workdir: str) -> dict[str, object]:
  """The teacher's and the three students' configs (students completed from the teacher's)."""
  teacher = default.get_config()
  teacher.diffusion.mean_type = args.mean_type
  teacher.training.num_train_steps = args.steps
  teacher.training.checkpoint_every_steps = min(args.steps, 1000)
  teacher_dir = os.path.join(workdir, "teacher")
  progressive = distill_progressive_default.get_config()
  progressive.distill.update(
    teacher_workdir=teacher_dir,
    teacher_steps=TEACHER_STEPS,
    rounds=ROUNDS,
    steps_per_round=args.round_steps,
  )
  progressive.training.num_train_steps = ROUNDS * args.round_steps
  progressive.training.checkpoint_every_steps = args.round_steps  # each round's student kept
  progressive.training.keep_checkpoints = ROUNDS
  progressive.sampling.num_steps = 1
  consistency = consistency_default.get_config("distillation")
  consistency.distill.teacher_workdir = teacher_dir
  ict = consistency_default.get_config("training")
  if args.quick:
    for config in (consistency, ict):
      config.training.num_train_steps = 2 * args.round_steps
  runs = {"teacher": teacher, "progressive": progressive, "cd": consistency, "ct": ict}
  runs = {name: runs[name] for name in ("teacher", *args.students.split(","))}
  for config in runs.values():
    config.training.eval_every_steps = config.training.sample_every_steps = 10**9  # none
    config.eval.num_fid_samples = 0
  return runs


def progressive_step(num_steps: int, round_steps: int) -> int:
  """The checkpoint of the round whose student takes `num_steps` DDIM steps: 64 / 2^(r+1) steps
  after round r, which ends at step (r + 1) · round_steps."""
  return int(math.log2(TEACHER_STEPS // num_steps)) * round_steps


def measure(ev: Evaluator, config, workdir: str, step: int | None = None, **sampling) -> dict:
  """Feature-FD and seconds per sample (the second of two calls: compiled) of `config`'s samples
  with `sampling` changed."""
  config = config.copy_and_resolve_references()
  config.sampling.update(sampling, batch_size=ev.num_samples)
  params, step = sample_lib.restore_ema_params(config, workdir, ev.mesh, step)
  images, labels = sample_lib.generate(config, params, ev.num_samples, ev.mesh)
  sample_fn = sample_lib.make_sample_fn(families.get_family(config), ev.num_samples, ev.mesh)
  cond = families.Cond(label=labels) if config.model.num_classes else None
  jax.block_until_ready(sample_fn(params, jax.random.key(1), cond))  # compiles
  start = time.perf_counter()
  jax.block_until_ready(sample_fn(params, jax.random.key(2), cond))
  seconds = (time.perf_counter() - start) / ev.num_samples
  fd = offline_metrics.evaluate_samples(ev.net, images, None, ev.train_images, ev.test_images)
  log(f"  {workdir} step {step} {sampling}: feature_fd {fd['feature_fd']:.3f}")
  return {"feature_fd": fd["feature_fd"], "ms_per_sample": 1e3 * seconds}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="runs/distill_fd")
  parser.add_argument("--steps", type=int, default=3000)  # the teacher's
  parser.add_argument("--round_steps", type=int, default=500)
  parser.add_argument("--num_samples", type=int, default=500)
  parser.add_argument("--mean_type", default="eps", help="the teacher's diffusion.mean_type")
  parser.add_argument("--students", default="progressive,cd,ct", help="which students to train")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.quick:
    args.steps, args.round_steps, args.num_samples = 20, 2, 50
  logging.set_verbosity(logging.WARNING)
  print(f"machine: {machine_description()}", flush=True)
  configs, dirs = run_configs(args, args.workdir), {}
  for name, config in configs.items():
    dirs[name] = os.path.join(args.workdir, name)
    config = families.completed(config)  # a student's teacher blocks, from the trained teacher
    configs[name] = config
    log(f"training {name} ({config.training.num_train_steps} steps)")
    train.train_and_evaluate(config, dirs[name])

  ev = Evaluator(args.num_samples)
  rows = {
    "teacher, DDIM (η = 0)": lambda n: ("teacher", None, {"sampler": "ddim"}),
    "teacher, DPM-Solver++(2M)": lambda n: ("teacher", None, {"sampler": "dpm_solver"}),
    "progressive distillation": lambda n: (
      "progressive",
      progressive_step(n, args.round_steps),
      {"sampler": "ddim"},
    ),
    "consistency distillation": lambda n: ("cd", None, {"sampler": "consistency"}),
    "consistency training (iCT)": lambda n: ("ct", None, {"sampler": "consistency"}),
  }
  results = {}
  for row, run_of in rows.items():
    for n in NFES:
      name, step, sampling = run_of(n)
      if name not in configs:
        continue  # (not among --students)
      if sampling["sampler"] == "dpm_solver" and n < 2:
        continue  # (its first step is DDIM's: the row above)
      if sampling["sampler"] == "ddim":  # the distillation grid (DPM-Solver: its log-SNR grid)
        sampling["timestep_spacing"] = "trailing"
      results.setdefault(row, {})[n] = measure(
        ev, configs[name], dirs[name], step, num_steps=n, **sampling
      )
  real = ev.real_data_fd()
  reference = measure(  # the first round's teacher
    ev,
    configs["teacher"],
    dirs["teacher"],
    sampler="ddim",
    num_steps=TEACHER_STEPS,
    timestep_spacing="trailing",
  )
  summary = {
    "results": results,
    "teacher_ddim_64": reference,
    "real_data_fd": real,
    "seconds": time.time() - START,
    "machine": machine_description(),
    "args": vars(args),
  }
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  header = " | ".join(f"{n} NFE" for n in NFES)
  print(f"\nfeature-FD (ms per sample)\n\n| model, sampler | {header} |\n|---|{'---|' * len(NFES)}")
  for row, by_nfe in results.items():
    cells = " | ".join(
      f"{by_nfe[n]['feature_fd']:.2f} ({by_nfe[n]['ms_per_sample']:.2f})" if n in by_nfe else "—"
      for n in NFES
    )
    print(f"| {row} | {cells} |")
  print(f"| teacher, DDIM 64 steps (reference) | {reference['feature_fd']:.2f} |")
  print(f"| real training digits (reference) | {real:.2f} |")
  print(f"\n{(time.time() - START) / 60:.0f} minutes in all.")


if __name__ == "__main__":
  main()
