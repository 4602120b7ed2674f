r"""1-Rectified Flow on CIFAR-10 (Liu et al. 2023, "Flow Straight and Fast", Table 1): score_sde's
DDPM++ U-Net (configs/ddpmpp_cifar10_vp.py's: 61.8 M parameters) regressing the velocity ε - x0 of
the linear path at uniform t, sampled by an adaptive ODE solver (RK45 there; Tsit5 here, tolerance
1e-5). The paper reports FID 2.58 and Inception Score 9.60 for 1-rectified flow with its ODE
solver, and 12.21 / 8.08 for one Euler step after reflow and distillation (not built here).

  python -m ddpm_jax.main --config=configs/rectified_flow_cifar10.py \
      --workdir=gs://bucket/rectified_flow_cifar10
"""

from configs import ddpmpp_cifar10_vp, default


def get_config():
  config = ddpmpp_cifar10_vp.get_config()
  default.with_family(config, "flow")
  config.flow.path, config.flow.t_sampling = "linear", "uniform"
  config.sampling.sampler = "ode"
  config.sampling.ode_tolerance = 1e-5
  config.eval.bpd_num_batches = 79  # the ODE's likelihood of the 10,000 test images
  return config
