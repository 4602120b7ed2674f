r"""DiT-XL/2 on ImageNet 256×256 (Peebles & Xie 2023, Table 4 and §5): 28 blocks of width 1152, 16
heads, patch 2 on the SD-VAE's 32×32×4 latents (256 tokens; 675 M parameters), class-conditional
with the null class (label dropout 0.1), learned Σ by L_hybrid on the linear schedule of 1000
steps, AdamW at 1e-4 without weight decay, batch 256, EMA 0.9999, 7M steps. The paper reports
FID-50K 2.27 with classifier-free guidance scale 1.5 (w = 0.5 here) and 9.62 without (250 DDPM
steps), guiding 3 of the 4 latent channels as its sample.py does (sampling.guidance_channels).
Its latents are the SD-VAE's: convert that VAE into a workdir and train on ImageNet's 256² images
encoded batch by batch, or on latents encoded once (python -m ddpm_jax.dataset_tool --encode_with=
gs://bucket/sd_vae --dataset=imagenet2012 --image_size=256 --resize=adm --out=…; then
data.dataset="latents").

  python -m ddpm_jax.convert --source=diffusers --preset=sd_vae_ft_ema \
      --checkpoint=sd-vae-ft-ema/ --workdir=gs://bucket/sd_vae
  python -m ddpm_jax.main --config=configs/dit_xl2_imagenet256.py \
      --workdir=gs://bucket/dit_xl2_imagenet256 --config.latent.autoencoder_workdir=gs://bucket/sd_vae
"""

from configs import default


def get_config():
  config = default.get_config("gaussian")
  config.data.dataset, config.data.eval_split = "imagenet2012", "validation"
  config.data.image_size, config.data.num_channels = 32, 4  # the SD-VAE's latents of 256² images
  config.data.random_flip = True
  config.model = default.dit_model("XL", 2, out_channels=8, num_classes=1000)
  config.diffusion.var_type, config.diffusion.loss_type = "learned_range", "hybrid"
  config.training.label_dropout = 0.1
  config.optim.lr, config.optim.warmup_steps, config.optim.grad_clip = 1e-4, 0, 0.0
  config.optim.ema_decay = 0.9999
  config.training.batch_size = 256
  config.training.num_train_steps = 7_000_000
  config.sampling.sampler, config.sampling.num_steps = "ddpm", 250
  config.sampling.guidance_scale, config.sampling.guidance_channels = 0.5, 3
  config.sampling.clip_denoised = False  # latents are not in [-1, 1]
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  config.eval.bpd_num_batches = 0
  return config
