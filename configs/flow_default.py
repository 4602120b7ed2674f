r"""Flow matching (rectified flow; Lipman et al. 2023, Liu et al. 2023) on the offline digits: the
default U-Net regresses the velocity ε - x0 of x_t = (1 - t) x0 + t ε at SD3's logit-normal t,
sampled by Euler on 50 steps from t = 1 to 0. No likelihood.

  python -m ddpm_jax.main --config=configs/flow_default.py --workdir=runs/flow_default

The DiT backbone instead: configs/dit_default.py:flow.
"""

from configs import default


def get_config():
  return default.get_config("flow")  # Euler, 50 steps, no bpd: the family's defaults
