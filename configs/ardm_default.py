"""The offline default (scikit-learn digits, small U-Net, CPU in minutes) as an order-agnostic
Autoregressive Diffusion Model over the 8-bit pixel values: D = 64 variables, 256 classes each;
sampling in 64 steps, or in fewer with --config.sampling.num_steps=S after --mode=eval has saved the
loss components.

  python -m ddpm_jax.main --config=configs/ardm_default.py --workdir=runs/ardm_default
"""

from configs import default


def get_config():
  # 256 values per sub-pixel, model.out_channels = 1 · 256: ARDM's defaults
  return default.get_config("ardm")
