"""The offline default (scikit-learn digits, small U-Net) as an upscale ARDM (Hoogeboom et al. 2022,
§4, bit upscaling): the 8-bit values in 4 stages of 2 bits, most significant first, each stage an
order-agnostic ARDM over the 64 sub-pixels given the coarser values; the same U-Net and training
budget as ardm_default.py. Exact bits/dim by --mode=eval (4 · 64 network calls per batch).

  python -m ddpm_jax.main --config=configs/ardm_upscale_default.py --workdir=runs/ardm_upscale
"""

from configs import ardm_default


def get_config():
  config = ardm_default.get_config()
  config.ardm.upscale_bits = 2
  config.model.out_channels = config.data.num_channels * 2**config.ardm.upscale_bits
  return config
