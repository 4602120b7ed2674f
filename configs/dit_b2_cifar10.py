r"""DiT-B/2 (Peebles & Xie 2023; 12 blocks of width 768, 12 heads, patch 2) with DiT's recipe on
CIFAR-10 pixels (32×32×3: 256 tokens): class-conditional with the null class (label dropout 0.1),
learned Σ by L_hybrid on the linear schedule of 1000 steps, AdamW at 1e-4 without weight decay and
no warm-up, EMA 0.9999, batch 256. No paper reports this setting: the paper's DiT-B/2 is on
ImageNet-256 latents (FID-50K 43.47 at 400K steps, Table 4); on pixels it is a transformer baseline
beside configs/ddpm_cifar10.py.

  python -m ddpm_jax.main --config=configs/dit_b2_cifar10.py --workdir=gs://bucket/dit_b2_cifar10
"""

from configs import ddpm_cifar10, default


def get_config(family: str = "gaussian"):
  config = ddpm_cifar10.get_config()
  default.with_family(config, family)
  config.model = default.dit_model("B", 2, out_channels=3, num_classes=10)
  config.training.label_dropout = 0.1
  if family == "gaussian":
    config.model.out_channels = 6  # learned Σ
    config.diffusion.var_type, config.diffusion.loss_type = "learned_range", "hybrid"
    config.eval.bpd_num_batches = 40  # the 10,000 test images at batch 256
  config.optim.lr, config.optim.warmup_steps, config.optim.grad_clip = 1e-4, 0, 0.0
  config.training.batch_size = 256
  config.training.num_train_steps = 400_000
  config.sampling.guidance_scale = 0.5  # DiT's cfg scale 1.5 in this project's w = scale - 1
  return config
