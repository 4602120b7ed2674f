"""VDM on CIFAR-10 (Kingma et al. 2021, App. B and the authors' config): learned schedule with γ
from -13.3 to 5 at start, continuous-time loss with low-discrepancy t, Fourier input features (n =
6, 7), and a U-Net without down-sampling: 32 residual blocks down and 33 up at 32×32 with 128
channels, dropout 0.1; AdamW (lr 2e-4, β2 0.99, weight decay 0.01), EMA 0.9999, batch 128, 10 M
steps. The paper reports 2.65 bits/dim on the test set. Difference: this project's middle block
always has self-attention (the authors' config has none).

  python -m ddpm_jax.main --config=configs/vdm_cifar10.py --workdir=gs://bucket/vdm_cifar10
"""

from configs import ddpm_cifar10, default


def get_config():
  config = ddpm_cifar10.get_config()
  default.with_family(config, "vdm")
  config.vdm.noise_schedule = "learned"
  config.vdm.gamma_min, config.vdm.gamma_max = -13.3, 5.0
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 32
  config.model.attn_resolutions = ()
  config.model.dropout = 0.1
  config.model.fourier_features = (6, 7)
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 0
  config.optim.beta2 = 0.99
  config.optim.weight_decay = 0.01
  config.optim.ema_decay = 0.9999
  config.training.batch_size = 128
  config.training.num_train_steps = 10_000_000
  config.sampling.num_steps = 1000
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  return config
