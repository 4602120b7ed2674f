r"""Improved DDPM's ablations on the offline default (§3): schedule × loss, four runs.

python -m launch.sweep --config configs/default.py --sweep_file configs/sweeps/iddpm_ablations.py \
    --run
"""


def get_sweep():
  runs = []
  for schedule in ("linear", "cosine"):
    runs.append({"diffusion.beta_schedule": schedule})
    runs.append(
      {
        "diffusion.beta_schedule": schedule,
        "diffusion.var_type": "learned_range",
        "diffusion.loss_type": "hybrid",
        "model.out_channels": 2,
      }
    )
  return runs
