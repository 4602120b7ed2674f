r"""Progressive distillation (Salimans & Ho 2022) of the offline default teacher (configs/default.py
trained in runs/default, the README's quick start): 4 rounds of 500 steps halve its 64 DDIM steps
to 4; the student samples with sampling.num_steps=4 (1, 2 or 4 divide its grid). Minutes on CPU.

  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default
  python -m ddpm_jax.main --config=configs/distill_progressive_default.py --workdir=runs/distill
  python -m ddpm_jax.main --config=configs/distill_progressive_default.py --workdir=runs/distill \
      --mode=eval

runs/default's teacher predicts ε: its students predict v (distill.student_mean_type="auto";
an ε student's x̂ = (z - σε̂)/α blows up where its few steps start) and start from its network, so
the first round also re-parameterises it (hence a learning rate above Salimans & Ho's). On the
digits (docs/families.md) they beat the teacher's DDIM and DPM-Solver++ at 1, 2 and 4 steps (one
step: feature-FD 23.8 where its DDIM gives 549).
"""

from configs import default


def get_config():
  config = default.get_config("distill")
  config.distill.teacher_workdir = "runs/default"
  # a student fine-tunes its teacher (Salimans & Ho: 1e-4 … 5e-5); 3e-4: the first round also
  # re-parameterises an ε teacher's network as its v student (one round at 1e-3: no better)
  config.optim.lr = 3e-4
  config.optim.ema_decay = 0.99  # rounds of 500 steps: an EMA of about 100
  return config
