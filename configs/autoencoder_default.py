r"""Latent diffusion's KL autoencoder (Rombach et al. 2022) on the offline digits: 8×8×1 images to
4×4×2 latents (f = 2, half the dimensions), L1 reconstruction + 1e-6 KL as LDM's KL-f8, no
discriminator (autoencoder.disc_weight > 0 adds LDM's patch GAN). Trains in about a minute on
CPU; --mode=eval reports reconstruction_mse, psnr and latent_std.

  python -m ddpm_jax.main --config=configs/autoencoder_default.py --workdir=runs/autoencoder
  python -m ddpm_jax.main --config=configs/autoencoder_default.py --workdir=runs/autoencoder \
      --mode=eval
"""

from configs import default


def get_config():
  config = default.get_config("autoencoder")
  config.model = default.autoencoder_model()
  config.training.num_train_steps = 1000
  config.optim.ema_decay = 0.99
  config.optim.lr = 1e-3
  return config
