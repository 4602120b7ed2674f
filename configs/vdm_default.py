"""The offline default (scikit-learn digits, small U-Net, CPU in minutes) as a Variational Diffusion
Model: learned noise schedule, continuous-time VLB, Fourier input features; samples on 1000
ancestral steps.

  python -m ddpm_jax.main --config=configs/vdm_default.py --workdir=runs/vdm_default
"""

from configs import default


def get_config():
  config = default.get_config("vdm")
  config.vdm.noise_schedule = "learned"
  config.vdm.n_features = 256
  config.model.fourier_features = (6, 7)
  config.sampling.num_steps = 1000
  return config
