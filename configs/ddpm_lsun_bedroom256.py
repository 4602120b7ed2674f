r"""DDPM on LSUN Bedroom 256×256 (Ho et al. 2020, Table 3 and App. B): the CelebA-HQ model (ch 128,
ch_mult (1, 1, 2, 2, 4, 4), attention at 16, no dropout, 114 M parameters), lr 2e-5, batch 64,
2,400,000 steps, no flips (the paper flips every dataset but LSUN Bedroom). The paper reports FID
6.36 (50,000 samples, 1000 ancestral steps). tfds's lsun/bedroom images have a short side of 256:
centre-cropped.

  python -m ddpm_jax.main --config=configs/ddpm_lsun_bedroom256.py \
      --workdir=gs://bucket/ddpm_lsun_bedroom256
"""

from configs import ddpm_lsun_church256


def get_config():
  config = ddpm_lsun_church256.get_config()
  config.data.dataset = "lsun/bedroom"
  config.data.random_flip = False
  config.training.num_train_steps = 2_400_000
  return config
