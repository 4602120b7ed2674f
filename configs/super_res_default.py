"""ADM-U super-resolution on the offline digits: 4×4 -> 8×8 (guided-diffusion's upsamplers at the
digits' scale). Trained on each digit's own 4×4 area-downsampled image; --mode=sample upsamples the
samples of the base model in super_res.low_res_workdir (a cascade: train configs/default.py at
image_size 4 there first), or else the held-out digits, downsampled.

  python -m ddpm_jax.main --config=configs/super_res_default.py --workdir=runs/super_res_default
"""

from configs import default


def get_config():
  return default.get_config("super_res")  # super_res.low_res_size: 4
