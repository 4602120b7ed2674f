r"""EDM on CIFAR-10 with its DDPM++ network, configuration E of EDM's Table 2: its preconditioning,
loss (log-normal σ, P_mean = -1.2, P_std = 1.2, λ(σ) = 1/c_out²) and training (batch 512, Adam at
lr 1e-3 after a 10 M-image ramp, EMA half-life 0.5 M images, dropout 0.13, 200 M images), sampled by
its Heun solver with 18 steps (35 network calls). The network: 128 channels × (2, 2, 2), 4 residual
blocks per resolution, attention at 16×16, BigGAN resampling, residual sums scaled by 1/√2,
positional embedding of c_noise = ¼ ln σ. Differences: the gradient's global norm is clipped at 1
(EDM clips none) and this project's U-Net initialisers.

The paper reports FID 2.05 for this configuration (its Table 2, row E, VP, unconditional; 1.88
with class labels, `--config.model.num_classes=10`), from 50,000 samples. Its headline 1.97 (1.79
conditional) is configuration F's, which adds EDM's non-leaky augmentation pipeline (p = 0.12, the
augmentation labels as a network input): this project does not implement it. No likelihood, so no
bits/dim in evaluation.

  python -m ddpm_jax.main --config=configs/edm_cifar10_ddpmpp.py --workdir=gs://bucket/edm_cifar10
"""

from configs import ddpmpp_cifar10_vp, default


def get_config():
  config = ddpmpp_cifar10_vp.get_config()
  default.with_family(config, "edm")
  config.model.ch_mult = (2, 2, 2)
  config.model.dropout = 0.13
  config.model.attn_resolutions = (16,)
  config.training.batch_size = 512
  config.training.num_train_steps = 200_000_000 // 512
  config.training.label_dropout = 0.0
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 10_000_000 // 512
  config.optim.ema_decay = 0.5 ** (512 / 500_000)  # a half-life of 0.5 M images
  config.sampling.num_steps = 18  # Heun: 35 network calls
  return config
