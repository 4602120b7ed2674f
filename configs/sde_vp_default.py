"""The offline default (scikit-learn digits, small U-Net, CPU in minutes) as a VP score SDE.

python -m ddpm_jax.main --config=configs/sde_vp_default.py --workdir=runs/sde_vp_default
"""

from configs import default


def get_config():
  config = default.get_config()
  config.family = "score_sde"
  config.sde.type = "vp"
  config.sampling.sampler = "pc"  # predictor-corrector (config.sampling.predictor, corrector)
  return config
