r"""Consistency models (Song et al. 2023; iCT, Song & Dhariwal 2023) of the digits.

`get_config()` / ":distillation": consistency distillation of the offline default teacher
(configs/default.py trained in runs/default, the README's quick start): the student starts from the
teacher, learns to map each point of the teacher's probability-flow ODE (one Heun step between
neighbours of EDM's grid of 18 noise levels) to the trajectory's end, against an EMA target
network (μ = 0.95). ":training": consistency training (iCT) without a teacher: EDM's preconditioned
U-Net from scratch, iCT's curriculum from 11 to 161 noise levels, pseudo-Huber distance, log-normal
noise levels. Both sample with CM's multistep sampler at sampling.num_steps (1: one step).

  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default
  python -m ddpm_jax.main --config=configs/consistency_default.py --workdir=runs/cd
  python -m ddpm_jax.main --config=configs/consistency_default.py:training --workdir=runs/ct
  python -m ddpm_jax.main --config=workdir:runs/cd --workdir=runs/cd --mode=eval \
      --config.sampling.num_steps=2
"""

from configs import default

METHODS = ("distillation", "training")


def get_config(method: str = "distillation"):
  if method not in METHODS:
    raise ValueError(f"configs/consistency_default.py:{method}: one of {', '.join(METHODS)}.")
  config = default.get_config("distill")
  config.distill.method = "consistency"
  config.sampling.sampler, config.sampling.num_steps = "consistency", 1
  config.sampling.timestep_spacing = "default"  # (DDIM's: progressive students')
  if method == "distillation":
    config.distill.teacher_workdir = "runs/default"
    config.optim.lr = 1e-4  # a student fine-tunes its teacher
    config.training.num_train_steps = 2000
  else:
    config.distill.update(initial_scales=11, num_scales=161)
    config.training.num_train_steps = 4000
  return config
