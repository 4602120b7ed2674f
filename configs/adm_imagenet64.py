"""ADM on class-conditional ImageNet 64×64 (Dhariwal & Nichol 2021, Table 14 / guided-diffusion's
flags): ch 192, ch_mult (1, 2, 3, 4), 3 residual blocks, attention at 32, 16, 8 with 64 channels per
head, BigGAN up/down-sampling, AdaGN, learned (range) variance, cosine schedule, hybrid loss.
The paper reports FID 2.07, sFID 4.29, precision 0.74 and recall 0.63 (ADM with dropout, Table 4;
250 ancestral steps, 50,000 samples against its ImageNet reference batch).

Data: the labelled full-resolution `imagenet2012` (1000 classes; tfds needs its manual download),
resized as guided-diffusion's training script does (`data.resize="adm"`: BOX halvings while the
short side is at least 128, BICUBIC to a short side of 64, centre crop; its image_datasets.py). The
unlabelled `downsampled_imagenet/64x64` cannot train a class-conditional model.

  python -m ddpm_jax.main --config=configs/adm_imagenet64.py --workdir=gs://bucket/adm_imagenet64
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "imagenet2012"
  config.data.eval_split = "validation"
  config.data.resize = "adm"
  config.data.image_size = 64
  config.data.num_channels = 3
  config.data.random_flip = True

  config.model.ch = 192
  config.model.out_channels = 6
  config.model.ch_mult = (1, 2, 3, 4)
  config.model.num_res_blocks = 3
  config.model.attn_resolutions = (32, 16, 8)
  config.model.dropout = 0.1
  config.model.num_head_channels = 64
  config.model.resblock_updown = True
  config.model.scale_shift_norm = True
  config.model.num_classes = 1000
  # ADM's own model: no null label (it guides with a classifier), its sinusoid embedding; the
  # architecture of the released checkpoint (python -m ddpm_jax.convert --preset=adm_imagenet64)
  config.model.null_class = False
  config.model.embedding_type = "adm_positional"
  config.model.dtype = "bfloat16"

  config.diffusion.beta_schedule = "cosine"
  config.diffusion.var_type = "learned_range"
  config.diffusion.loss_type = "hybrid"

  config.training.label_dropout = 0.0
  config.optim.lr = 3e-4
  config.optim.warmup_steps = 0
  config.optim.grad_clip = 1.0
  config.optim.ema_decay = 0.9999

  config.training.batch_size = 2048
  config.training.num_train_steps = 540_000
  config.training.log_every_steps = 100
  config.training.checkpoint_every_steps = 10_000
  config.training.eval_every_steps = 50_000
  config.training.sample_every_steps = 50_000
  config.sampling.num_steps = 250
  config.sampling.sampler = "ddpm"
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  config.eval.num_reference_images = 50_000
  return config
