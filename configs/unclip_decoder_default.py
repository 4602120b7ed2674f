r"""unCLIP's decoder (Ramesh et al. 2022, §2.1) on the offline digits: the default U-Net given each
image's embedding (projected into the time embedding and 4 extra context tokens), with
classifier-free guidance by dropping the embedding. The embeddings are a representation run's codes
of each split (configs/representation_default.py; a real dataset's: data.embedding_key naming a
tfds feature, sidecar arrays or a packed column), the two-stage samples a prior's
(configs/prior_default.py):

  for split in train test; do python -m ddpm_jax.main --config=configs/representation_default.py \
      --workdir=runs/repr --mode=represent --config.representation.split=$split; done
  python -m ddpm_jax.main --config=configs/unclip_decoder_default.py --workdir=runs/decoder
  python -m ddpm_jax.main --config=configs/unclip_decoder_default.py --workdir=runs/decoder \
      --mode=sample --config.sampling.prior_workdir=runs/prior   # label -> prior -> decoder
  python -m ddpm_jax.main --config=configs/unclip_decoder_default.py --workdir=runs/decoder \
      --mode=variations   # each held-out embedding decoded from several noises
  python -m ddpm_jax.main --config=configs/unclip_decoder_default.py --workdir=runs/decoder \
      --mode=interpolate  # two held-out images' embeddings slerped
"""

from configs import default


def get_config():
  config = default.get_config("gaussian")
  config.data.embedding_key = "runs/repr/represent/{split}_2000.npz"
  config.model.embedding_dim = 32
  config.model.embedding_tokens = 4
  config.model.scale_shift_norm = True  # AdaGN: the embedding reaches every residual block
  config.training.label_dropout = 0.1  # the null embedding ∅ = 0, for classifier-free guidance
  config.training.num_train_steps = 2000
  config.sampling.guidance_scale = 1.0
  config.eval.num_fid_samples = 0
  config.eval.bpd_num_batches = 0
  return config
