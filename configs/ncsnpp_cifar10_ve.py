r"""VE score SDE on CIFAR-10 with score_sde's NCSN++ (continuous) settings: σ from 0.01 to 50, N =
1000, log σ conditioning through Gaussian Fourier features (128 frequencies, scale 16), and NCSN++:
4 residual blocks per resolution, BigGAN up/down-sampling with the FIR filter (1, 3, 3, 1), residual
sums rescaled by 1/√2, progressive input ("input_skip") and output ("output_skip") with sums,
ncsnpp.py's block layout; EMA 0.999, PC sampling with snr 0.16. 61,894,796 parameters: score_sde's
count less its 128 Fourier frequencies, which are constants here. Differences: GroupNorm as in
ddpmpp_cifar10_vp.py; data in [-1, 1] (score_sde's VE models see [0, 1]) with the same σ range.
The paper reports FID 2.38 and Inception Score 9.83 for NCSN++ cont. (VE) (Table 3).

  python -m ddpm_jax.main --config=configs/ncsnpp_cifar10_ve.py \
      --workdir=gs://bucket/ncsnpp_cifar10_ve
"""

from configs import ddpm_cifar10, default


def get_config():
  config = ddpm_cifar10.get_config()
  default.with_family(config, "score_sde")
  config.sde.type = "ve"
  config.sde.sigma_min, config.sde.sigma_max, config.sde.num_scales = 0.01, 50.0, 1000
  config.sde.conditioning = "sigma"  # NCSN++ embeds log σ with Gaussian Fourier features
  config.model.embedding_type = "fourier"
  config.model.num_res_blocks = 4
  config.model.resblock_updown = True
  config.model.skip_rescale = True
  config.model.ncsnpp_layout = True
  config.model.fir_kernel = (1, 3, 3, 1)
  config.model.progressive_input = "input_skip"
  config.model.progressive = "output_skip"
  config.optim.ema_decay = 0.999
  config.training.num_train_steps = 1_300_000
  # score_sde's: reverse diffusion with one Langevin corrector step
  config.sampling.sampler, config.sampling.predictor, config.sampling.corrector = (
    "pc",
    "reverse_diffusion",
    "langevin",
  )
  config.sampling.snr = 0.16
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  return config
