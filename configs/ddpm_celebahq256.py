"""DDPM on CelebA-HQ 256×256 (Ho et al. 2020, App. B): ch_mult (1, 1, 2, 2, 4, 4), 114 M parameters.
The paper reports no CelebA-HQ FID (samples only, Fig. 1; its LSUN runs of this model are
ddpm_lsun_church256.py and ddpm_lsun_bedroom256.py). celeb_a_hq has one split: training reads its
first 95 %, evaluations the last 5 %.

python -m ddpm_jax.main --config=configs/ddpm_celebahq256.py --workdir=gs://bucket/ddpm_celebahq256
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "celeb_a_hq/256"
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.random_flip = True

  config.model.ch = 128
  config.model.out_channels = 3
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0

  config.optim.lr = 2e-5
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.optim.ema_decay = 0.9999

  config.training.batch_size = 64
  config.training.num_train_steps = 500_000
  config.training.log_every_steps = 100
  config.training.checkpoint_every_steps = 10_000
  config.training.eval_every_steps = 50_000
  config.training.sample_every_steps = 50_000
  config.data.train_split = "train[:95%]"
  config.data.eval_split = "train[95%:]"
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  return config
