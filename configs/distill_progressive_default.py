r"""Progressive distillation (Salimans & Ho 2022) of the offline default teacher (configs/default.py
trained in runs/default, the README's quick start): 4 rounds of 500 steps halve its 64 DDIM steps
to 4; the student samples with sampling.num_steps=4 (1, 2 or 4 divide its grid). Minutes on CPU.

  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default
  python -m ddpm_jax.main --config=configs/distill_progressive_default.py --workdir=runs/distill
  python -m ddpm_jax.main --config=configs/distill_progressive_default.py --workdir=runs/distill \
      --mode=eval

An ε-predicting teacher (runs/default's) distils poorly (docs/families.md: its students lose to its
own DDIM); one trained with --config.diffusion.mean_type=v distils well (its 1-step student ≈ its
64 DDIM steps): train it in another workdir and pass --config.distill.teacher_workdir.
"""

from configs import default


def get_config():
  config = default.get_config("distill")
  config.distill.teacher_workdir = "runs/default"
  config.optim.lr = 1e-4  # a student fine-tunes its teacher (Salimans & Ho: 1e-4 … 5e-5)
  config.optim.ema_decay = 0.99  # rounds of 500 steps: an EMA of about 100
  return config
