r"""Small-scale reproduction of the papers' findings on the offline digits, with identical training
budgets.

  python -m benchmarks.reproduce_small [--workdir=runs/reproduce_small] [--steps=3000] \
      [--num_samples=500]
  python -m benchmarks.reproduce_small --quick   # minutes: a smoke run of every row, meaningless

Trains four models of configs/default.py (same U-Net, steps, batch, seed), then measures:
  1. linear vs cosine β schedule (L_simple): test bits/dim
       Improved DDPM §3.2: cosine is better
  2. L_simple vs L_hybrid with learned_range Σ (cosine): bits/dim and sample feature-FD at full and
     50 steps
       Improved DDPM §3.1/§4: hybrid improves likelihood, similar samples, fewer steps
  3. ancestral vs DDIM (η = 0) at 10, 20, 50, 100 and all 1000 steps: feature-FD
       DDIM Table 1: DDIM far better at few steps
  4. classifier-free guidance w ∈ {0, 1, 2, 4} (DDIM 50): class accuracy vs feature-FD
       Ho & Salimans: accuracy (fidelity) rises, diversity falls (FD grows at large w)
  5. DPM-Solver++(2M) at 10 and 20 evaluations next to (3)
       DPM-Solver++: ≈ DDIM-100 quality in 10–20
Sample quality is the offline feature Fréchet distance to the test split
(evaluation/offline_metrics.py). Bits/dim: the full discrete VLB (calc_bpd_loop) over the whole test
split; L_simple models are evaluated with the fixed β̃ (fixed_small) variance, the better of DDPM's
two choices for likelihood. The last term L_{T-1} is also reported on its own: the cosine schedule
clips β_T to 0.999, so there the posterior mean weighs the ε error by 1/α_T = 1000 and a short run's
ε error at t = T-1 (MSE ~5e-3 after 3000 steps) costs ~4 bits/dim. Prints progress, a markdown table
and writes results.json to the workdir. Reuses trained models in the workdir; `--only=bpd` or
`--only=samples` re-measures one part and keeps the other from results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from absl import logging
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import machine_description  # noqa: E402
from configs import default  # noqa: E402
from ddpm_jax import diffusion, models, pixels, train  # noqa: E402
from ddpm_jax.data import sources
from ddpm_jax.evaluation import feature_net, offline_metrics  # noqa: E402
from ddpm_jax.families import gaussian  # noqa: E402
from ddpm_jax.jobs import sample as sample_lib  # noqa: E402
from ddpm_jax.runtime import parallel

START = time.time()


def log(message: str) -> None:
  print(f"[{time.time() - START:7.1f} s] {message}", flush=True)


def model_configs(steps: int) -> dict[str, object]:
  def make(**changes):
    config = default.get_config()
    config.training.num_train_steps = steps
    config.training.eval_every_steps = steps  # one sample grid at the end
    config.training.checkpoint_every_steps = min(steps, 1000)
    for key, value in changes.items():
      section, name = key.split("__")
      config[section][name] = value
    return config

  return {
    "linear_simple": make(),
    "cosine_simple": make(diffusion__beta_schedule="cosine"),
    "cosine_hybrid": make(
      diffusion__beta_schedule="cosine",
      diffusion__var_type="learned_range",
      diffusion__loss_type="hybrid",
      model__out_channels=2,
    ),
    "linear_simple_cond": make(model__num_classes=10),
  }


class Evaluator:
  def __init__(self, num_samples: int):
    self.num_samples = num_samples
    self.mesh = parallel.make_mesh()
    data = default.get_config().data
    self.train_images, _ = sources.load_split(data, "train")
    self.test_images, _ = sources.load_split(data, "test")
    self.net = feature_net.load(feature_net.default_path("digits", 8))[0]

  def samples(self, config, workdir: str, **sampling) -> dict[str, float]:
    config = config.copy_and_resolve_references()
    for key, value in sampling.items():
      config.sampling[key] = value
    config.sampling.batch_size = self.num_samples
    params, step = sample_lib.restore_ema_params(config, workdir, self.mesh)
    t0 = time.time()
    images, labels = sample_lib.generate(config, params, self.num_samples, self.mesh)
    labels = labels if config.model.num_classes else None
    out = offline_metrics.evaluate_samples(
      self.net, images, labels, self.train_images, self.test_images
    )
    log(
      f"  {sampling}: feature_fd {out['feature_fd']:.3f}"
      + (f", class_accuracy {out['class_accuracy']:.3f}" if labels is not None else "")
      + f" ({time.time() - t0:.0f} s)"
    )
    return out

  def real_data_fd(self) -> float:
    """The reference at this sample count: as many real training digits against the test split (not
    a floor: the test digits are other writers', and a model can land nearer to them than the
    training digits are)."""
    images = self.train_images[
      np.random.default_rng(0).permutation(len(self.train_images))[: self.num_samples]
    ]
    features = lambda x: offline_metrics.features_and_logits(self.net, x)[0]
    value = offline_metrics.feature_frechet_distance(features(images), features(self.test_images))
    log(f"  real training digits: feature_fd {value:.3f}")
    return value

  def bpd(self, config, workdir: str, var_type: str | None = None) -> dict[str, float]:
    """Test bits/dim (calc_bpd_loop on the whole test split) and the share of its last term
    L_{T-1}."""
    config = config.copy_and_resolve_references()
    if var_type:
      config.diffusion.var_type = var_type
    params, _ = sample_lib.restore_ema_params(config, workdir, self.mesh)
    d, model = gaussian.make_diffusion(config), models.get_model(config.model)
    bpd_loop = jax.jit(
      lambda p, x: diffusion.calc_bpd_loop(
        d, lambda x_t, t: model.apply(p, x_t, t), x, jax.random.key(0)
      )
    )
    totals, last = [], []
    for batch in np.array_split(self.test_images, 3):
      out = bpd_loop(params, pixels.from_uint8(batch))
      totals.append(np.asarray(out["total_bpd"]))
      last.append(np.asarray(out["vb"])[:, -1])
    result = {
      "total": float(np.concatenate(totals).mean()),
      "last_term": float(np.concatenate(last).mean()),
    }
    log(f"  test bits/dim {result['total']:.4f} (of which L_T-1: {result['last_term']:.4f})")
    return result


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="runs/reproduce_small")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--num_samples", type=int, default=500)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument(
    "--only", choices=["bpd", "samples"], help="re-measure one part; the rest from results.json"
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.quick:
    args.steps, args.num_samples = 20, 50
  logging.set_verbosity(logging.WARNING)
  print(f"machine: {machine_description()}", flush=True)
  configs = model_configs(args.steps)
  for name, config in configs.items():
    workdir = os.path.join(args.workdir, name)
    log(f"training {name} ({args.steps} steps)")
    train.train_and_evaluate(config, workdir)

  ev = Evaluator(args.num_samples)
  dirs = {name: os.path.join(args.workdir, name) for name in configs}
  results_path = os.path.join(args.workdir, "results.json")
  r: dict[str, dict] = {}
  if args.only:
    with open(results_path) as f:
      r = json.load(f)
  if args.only != "samples":
    log("1-2. bits/dim (whole test split, all 1000 VLB terms)")
    r["bpd"] = {
      "linear_simple": ev.bpd(configs["linear_simple"], dirs["linear_simple"], "fixed_small"),
      "cosine_simple": ev.bpd(configs["cosine_simple"], dirs["cosine_simple"], "fixed_small"),
      "cosine_hybrid": ev.bpd(configs["cosine_hybrid"], dirs["cosine_hybrid"]),
    }
  if args.only != "bpd":
    measure_samples(ev, configs, dirs, r)
  r["real_data_fd"] = ev.real_data_fd()
  r["seconds"] = time.time() - START
  with open(results_path, "w") as f:
    json.dump(r, f, indent=2)
  print_table(r)


def measure_samples(ev: Evaluator, configs, dirs, r: dict) -> None:
  log("2. L_simple vs L_hybrid samples (ancestral, 1000 and 50 steps)")
  r["hybrid"] = {
    f"{name}_{steps}": ev.samples(configs[name], dirs[name], sampler="ddpm", num_steps=steps)[
      "feature_fd"
    ]
    for name in ("cosine_simple", "cosine_hybrid")
    for steps in (1000, 50)
  }
  log("3. ancestral vs DDIM (linear, L_simple)")
  r["steps"] = {
    f"{sampler}_{steps}": ev.samples(
      configs["linear_simple"], dirs["linear_simple"], sampler=sampler, num_steps=steps, eta=0.0
    )["feature_fd"]
    for sampler in ("ddpm", "ddim")
    for steps in (10, 20, 50, 100, 1000)
  }
  log("5. DPM-Solver++(2M)")
  r["dpm_solver"] = {
    f"dpm_solver_{steps}": ev.samples(
      configs["linear_simple"], dirs["linear_simple"], sampler="dpm_solver", num_steps=steps
    )["feature_fd"]
    for steps in (10, 20)
  }
  log("4. classifier-free guidance (DDIM 50)")
  r["guidance"] = {
    f"w={w}": ev.samples(
      configs["linear_simple_cond"],
      dirs["linear_simple_cond"],
      sampler="ddim",
      num_steps=50,
      guidance_scale=float(w),
    )
    for w in (0, 1, 2, 4)
  }


def print_table(r: dict) -> None:
  b, h, s, g, d = r["bpd"], r["hybrid"], r["steps"], r["guidance"], r["dpm_solver"]
  agree = lambda ok: "agrees" if ok else "**disagrees**"
  bpd = lambda name: f"{b[name]['total']:.3f} ({b[name]['total'] - b[name]['last_term']:.3f})"
  without_last = lambda name: b[name]["total"] - b[name]["last_term"]
  rows = [
    (
      "1. linear vs cosine, L_simple: bits/dim (without L_T-1)",
      f"{bpd('linear_simple')} vs {bpd('cosine_simple')}",
      "cosine better (iDDPM §3.2)",
      agree(b["cosine_simple"]["total"] < b["linear_simple"]["total"])
      + "; without L_T-1: "
      + agree(without_last("cosine_simple") < without_last("linear_simple")),
    ),
    (
      "2. L_simple vs L_hybrid (cosine): bits/dim (without L_T-1)",
      f"{bpd('cosine_simple')} vs {bpd('cosine_hybrid')}",
      "hybrid better (iDDPM §3.1)",
      agree(b["cosine_hybrid"]["total"] < b["cosine_simple"]["total"])
      + "; without L_T-1: "
      + agree(without_last("cosine_hybrid") < without_last("cosine_simple")),
    ),
    (
      "2. … feature-FD, 1000 / 50 ancestral steps",
      f"{h['cosine_simple_1000']:.2f} / {h['cosine_simple_50']:.2f} vs "
      f"{h['cosine_hybrid_1000']:.2f} / {h['cosine_hybrid_50']:.2f}",
      "similar at 1000; hybrid better at 50 (iDDPM §4)",
      agree(h["cosine_hybrid_50"] < h["cosine_simple_50"]),
    ),
    (
      "3. feature-FD, ancestral at 10/20/50/100/1000",
      " / ".join(f"{s[f'ddpm_{n}']:.2f}" for n in (10, 20, 50, 100, 1000)),
      "",
      "",
    ),
    (
      "3. feature-FD, DDIM η=0 at 10/20/50/100/1000",
      " / ".join(f"{s[f'ddim_{n}']:.2f}" for n in (10, 20, 50, 100, 1000)),
      "DDIM far better at few steps (DDIM Table 1)",
      agree(s["ddim_10"] < s["ddpm_10"] and s["ddim_20"] < s["ddpm_20"]),
    ),
    (
      "5. feature-FD, DPM-Solver++ at 10 / 20",
      f"{d['dpm_solver_10']:.2f} / {d['dpm_solver_20']:.2f}",
      "≈ DDIM-100 in 10–20 evaluations",
      agree(d["dpm_solver_20"] <= 1.2 * s["ddim_100"]),
    ),
    (
      "4. CFG w = 0/1/2/4: class accuracy",
      " / ".join(f"{g[f'w={w}']['class_accuracy']:.3f}" for w in (0, 1, 2, 4)),
      "rises with w",
      agree(g["w=4"]["class_accuracy"] > g["w=0"]["class_accuracy"]),
    ),
    (
      "4. CFG w = 0/1/2/4: feature-FD",
      " / ".join(f"{g[f'w={w}']['feature_fd']:.2f}" for w in (0, 1, 2, 4)),
      "grows at large w (less diversity)",
      agree(g["w=4"]["feature_fd"] > min(g[f"w={w}"]["feature_fd"] for w in (0, 1))),
    ),
  ]
  rows.append(
    ("feature-FD of as many real training digits (reference)", f"{r['real_data_fd']:.2f}", "", "")
  )
  print("\n| measurement | this reproduction | paper | |\n|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  print(f"\n{r['seconds'] / 60:.0f} minutes in all.")


if __name__ == "__main__":
  main()
