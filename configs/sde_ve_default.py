"""The offline default (scikit-learn digits, small U-Net, CPU in minutes) as a VE score SDE.

python -m ddpm_jax.main --config=configs/sde_ve_default.py --workdir=runs/sde_ve_default
"""

from configs import default


def get_config():
  config = default.get_config("score_sde")
  config.sde.type = "ve"
  return config
