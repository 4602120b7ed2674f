"""VE score SDE on CIFAR-10 with score_sde's NCSN++ (continuous) settings: σ from 0.01 to 50, N = 1000,
log σ conditioning through Gaussian Fourier features, 4 residual blocks per resolution, BigGAN up/down-sampling, EMA 0.999, PC sampling with snr 0.16. The network
is this project's U-Net at NCSN++'s sizes (without its FIR resampling, progressive input/output and skip
rescaling).

  python -m ddpm_jax.main --config=configs/ncsnpp_cifar10_ve.py --workdir=gs://bucket/ncsnpp_cifar10_ve
"""
from configs import ddpm_cifar10


def get_config():
  config = ddpm_cifar10.get_config()
  config.sde.name = "ve"
  config.sde.sigma_min, config.sde.sigma_max, config.sde.num_scales = 0.01, 50.0, 1000
  config.sde.conditioning = "sigma"      # NCSN++ embeds log σ with Gaussian Fourier features
  config.model.embedding_type = "fourier"
  config.model.num_res_blocks = 4
  config.model.resblock_updown = True
  config.optim.ema_decay = 0.999
  config.training.num_train_steps = 1_300_000
  config.sampling.snr = 0.16
  return config
