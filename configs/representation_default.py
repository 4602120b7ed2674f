r"""Diffusion-based representation learning (Abstreiter et al. 2021; Preechakul et al. 2022's
diffusion autoencoder) on the offline digits: an encoder E(x0) -> z ∈ R^32 learned with the default
U-Net conditioned on z by AdaGN, with the DDPM loss. Trains on a 2-core CPU, offline, in minutes.

  python -m ddpm_jax.main --config=configs/representation_default.py --workdir=runs/repr
  python -m ddpm_jax.main --config=configs/representation_default.py --workdir=runs/repr --mode=eval
  python -m ddpm_jax.main --config=configs/representation_default.py --workdir=runs/repr \
      --mode=represent   # runs/repr/represent/train_<step>.npz: z, labels

--mode=eval writes probe_accuracy (a linear probe on z), its baselines (the untrained encoder, the
pixels), reconstruction_mse and semantic_consistency to eval_<step>.json; --mode=sample decodes
the held-out images' codes from fresh noise.
"""

from configs import default


def get_config():
  config = default.get_config("representation")  # with AdaGN (the family's default)
  config.training.num_train_steps = 2000
  config.eval.num_fid_samples = 0
  config.eval.bpd_num_batches = 0
  return config
