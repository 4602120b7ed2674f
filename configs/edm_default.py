"""EDM (Karras et al. 2022) on the offline digits: the default U-Net as EDM's preconditioned
denoiser, log-normal σ and EDM's loss weighting, sampled by EDM's Heun solver (18 steps, 35 network
calls) on its σ grid. No likelihood: evaluation measures the loss and FID.

  python -m ddpm_jax.main --config=configs/edm_default.py --workdir=runs/edm_default
"""

from configs import default


def get_config():
  return default.get_config("edm")  # its sampler (heun) and bpd_num_batches=0 are EDM's defaults
