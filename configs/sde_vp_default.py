"""The offline default (scikit-learn digits, small U-Net, CPU in minutes) as a VP score SDE.

python -m ddpm_jax.main --config=configs/sde_vp_default.py --workdir=runs/sde_vp_default
"""

from configs import default


def get_config():
  config = default.get_config("score_sde")
  config.sde.type = "vp"
  return config
