r"""DDPM on LSUN Church 256×256 (Ho et al. 2020, Table 3 and App. B): the CelebA-HQ model (ch 128,
ch_mult (1, 1, 2, 2, 4, 4), attention at 16, no dropout, 114 M parameters), lr 2e-5, batch 64,
1,200,000 steps, random horizontal flips. The paper reports FID 7.89 (50,000 samples, 1000 ancestral
steps). tfds's lsun/church_outdoor images have a short side of 256: centre-cropped.

  python -m ddpm_jax.main --config=configs/ddpm_lsun_church256.py \
      --workdir=gs://bucket/ddpm_lsun_church256
"""

from configs import ddpm_celebahq256


def get_config():
  config = ddpm_celebahq256.get_config()
  config.data.dataset = "lsun/church_outdoor"
  config.data.train_split, config.data.eval_split = "train", "validation"
  config.data.random_flip = True
  config.training.num_train_steps = 1_200_000
  config.sampling.sampler = "ddpm"
  return config
