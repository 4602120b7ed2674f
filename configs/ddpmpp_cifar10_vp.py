r"""VP score SDE on CIFAR-10 with score_sde's DDPM++ (continuous) settings: β from 0.1 to 20, N =
1000, and DDPM++: 4 residual blocks per resolution, BigGAN up/down-sampling, residual sums rescaled
by 1/√2, ncsnpp.py's block layout, EMA 0.9999, 1.3 M steps; 61,804,419 parameters, the count of
score_sde's model. Differences: GroupNorm with 32 groups and ε = 1e-5 (score_sde: min(C/4, 32)
groups, ε = 1e-6; the same groups at these widths) and this project's initialisers.
The paper reports FID 2.55 and Inception Score 9.58 for DDPM++ cont. (VP) (Table 3).

  python -m ddpm_jax.main --config=configs/ddpmpp_cifar10_vp.py \
      --workdir=gs://bucket/ddpmpp_cifar10_vp
"""

from configs import ddpm_cifar10, default


def get_config():
  config = ddpm_cifar10.get_config()
  default.with_family(config, "score_sde")
  config.sde.type = "vp"
  config.sde.beta_min, config.sde.beta_max, config.sde.num_scales = 0.1, 20.0, 1000
  config.model.num_res_blocks = 4
  config.model.resblock_updown = True
  config.model.skip_rescale = True
  config.model.ncsnpp_layout = True
  config.training.num_train_steps = 1_300_000
  # score_sde's sampling for this model: Euler-Maruyama, no corrector
  config.sampling.sampler, config.sampling.predictor, config.sampling.corrector = (
    "pc",
    "euler_maruyama",
    "none",
  )
  config.sampling.snr = 0.16
  config.eval.num_fid_samples = 50_000
  config.eval.allow_fewer_fid_samples = False
  return config
