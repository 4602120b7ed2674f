"""DDPM on CIFAR-10 (Ho et al. 2020, Table 1 and App. B): the 35.7 M-parameter U-Net. The paper
reports FID 3.17 and Inception Score 9.46 (50,000 samples against the training set) and 3.75
bits/dim (test, Table 2).

python -m ddpm_jax.main --config=configs/ddpm_cifar10.py --workdir=gs://bucket/ddpm_cifar10
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True

  config.model.ch = 128
  config.model.out_channels = 3
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1

  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.optim.ema_decay = 0.9999

  config.training.batch_size = 128
  config.training.num_train_steps = 800_000
  config.training.log_every_steps = 100
  config.training.checkpoint_every_steps = 10_000
  config.training.eval_every_steps = 50_000
  config.training.sample_every_steps = 50_000

  config.eval.num_reference_images = 50_000
  config.eval.bpd_num_batches = 79  # the 10,000 test images at batch 128
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  return config
