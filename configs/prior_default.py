r"""unCLIP's diffusion prior (Ramesh et al. 2022, §2.2) on the offline digits' embeddings: a
Transformer that samples an embedding given a class label (classifier-free guidance), trained on
the codes of a representation run (configs/representation_default.py):

  python -m ddpm_jax.main --config=configs/representation_default.py --workdir=runs/repr
  python -m ddpm_jax.main --config=configs/representation_default.py --workdir=runs/repr \
      --mode=represent   # runs/repr/represent/train_2000.npz: embedding, label
  python -m ddpm_jax.main --config=configs/prior_default.py --workdir=runs/prior \
      --config.data.path=runs/repr/represent/train_2000.npz
  python -m ddpm_jax.main --config=configs/prior_default.py --workdir=runs/prior --mode=sample

Any .npz of "embedding" [N, D] with "label" [N] and/or "caption_embedding" [N, L, Dc] trains it
(CLIP image embeddings with their captions' token embeddings, computed elsewhere); D, Dc and the
classes are read from it. --mode=sample writes samples/samples_<step>.npz ("embeddings",
"labels"), which configs/unclip_decoder_default.py decodes (its sampling.prior_workdir).
"""

from configs import default


def get_config():
  config = default.get_config("prior")
  config.data.path = "runs/repr/represent/train_2000.npz"
  # ε-prediction on the linear schedule: unCLIP's x0-prediction (cosine or linear) drew class means
  # 0.2-0.3 too far out on tests/test_unclip.py's Gaussian classes where ε drew them within 0.1
  # (3000 steps each); diffusion.mean_type="x0" (with beta_schedule="cosine") is unCLIP's choice
  config.diffusion.mean_type = "eps"
  config.sampling.sampler = "ddpm"  # ancestral, on 64 respaced steps
  config.sampling.num_steps = 64  # unCLIP samples its prior in 64 strided steps
  config.sampling.guidance_scale = 1.0
  config.sampling.num_samples = 500
  config.sampling.batch_size = 500
  config.training.batch_size = 256
  config.training.num_train_steps = 3000
  config.eval.num_loss_batches = 0  # digits' 5 % held out (75 codes) is under one batch of 256
  return config
