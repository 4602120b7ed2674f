r"""A Diffusion Transformer (Peebles & Xie 2023) on the offline digits: DiT's block and recipe
(adaLN-Zero, learned Σ by L_hybrid, the linear schedule of 1000 steps, Adam without weight decay)
at a size 2 cores train in minutes (4 blocks of width 128, patch 2: 16 tokens of the 8×8 digits;
1.27 M parameters and 27 MFLOPs per image, the default U-Net's 0.70 M and 26); the paper's sizes
are model.dit_size S | B | L | XL with model.patch_size 2 | 4 | 8.

  python -m ddpm_jax.main --config=configs/dit_default.py --workdir=runs/dit_default
  python -m ddpm_jax.main --config=configs/dit_default.py:flow --workdir=runs/dit_flow   # SiT-like
"""

from configs import default


def get_config(family: str = "gaussian"):
  config = default.get_config(family)
  config.model = default.dit_model("S", 2, depth=4, hidden_size=128, num_heads=4)
  if family == "gaussian":  # DiT's: learned Σ (L_hybrid), linear β
    config.model.out_channels = 2 * config.data.num_channels
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"
  config.optim.lr = 1e-3  # the paper's 1e-4 is ImageNet's at batch 256; digits train faster
  return config
