r"""ADM's noisy classifier (Dhariwal & Nichol 2021, §4) on the 8×8 digits: p(y | x_t) on the default
config's diffusion, for classifier guidance of a diffusion model trained with configs/default.py.
Trains on a 2-core CPU, offline, in minutes.

  python -m ddpm_jax.main --config=configs/classifier_default.py --workdir=runs/classifier_default
  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default --mode=sample \
      --config.sampling.classifier_workdir=runs/classifier_default \
      --config.sampling.classifier_scale=1.0
"""

from configs import default


def get_config():
  config = default.get_config("classifier")
  config.model.name = "classifier"
  config.model.num_classes = 10
  config.model.num_head_channels = 32
  # The U-Net's output layer options; the encoder has none.
  del config.model.out_channels, config.model.progressive, config.model.null_class
  del config.model.embedding_dim, config.model.embedding_tokens
  config.sampling.num_samples = 0
  config.eval.bpd_num_batches = 0
  return config
