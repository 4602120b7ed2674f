"""Small DDPM on the 8×8 handwritten digits that ship inside scikit-learn, at their native 8×8:
trains on a 2-core CPU, offline, in about 7 minutes (3000 steps of batch 64), then writes a grid of
EMA samples to workdir/samples. Every other config starts from this one and changes only what
differs. No paper reports on these digits: the figures to reproduce are in benchmarks/README.md.

  python -m ddpm_jax.main --config=configs/default.py --workdir=runs/default

`get_config(family)` builds the shared blocks and the blocks of that family only (`with_family`), so
that a field another family reads is an unknown field here, never a silently ignored one:

  python -m ddpm_jax.main --config=configs/default.py:score_sde --config.sde.type=ve ...
"""

import ml_collections
from ml_collections import config_dict

from ddpm_jax import families
from ddpm_jax.families import config_validation


def get_config(family: str = "gaussian") -> ml_collections.ConfigDict:
  return with_family(_shared_config(), family)


def _shared_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # What is trained: "gaussian" (DDPM / Improved DDPM / ADM), "classifier" (ADM's noisy classifier),
  # "score_sde", "vdm", "ardm", "super_res", "edm", "representation", "prior" or "flow"
  # (ddpm_jax/families/), each with its own block (with_family)
  config.family = "gaussian"

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"
  data.image_size = 8
  data.num_channels = 1
  data.random_flip = False
  data.data_dir = config_dict.placeholder(str)
  data.path = config_dict.placeholder(str)  # data.dataset="embeddings": the .npz of vectors
  data.train_split = "train"  # tfds slices work: "train[:95%]"
  data.eval_split = "test"  # the held-out split of evaluations (ddpm_jax.data.sources.DATASETS)
  data.resize = "bilinear"  # centre crop, bilinear; "adm": guided-diffusion's BOX + BICUBIC
  # processes decoding and resizing each batch, in a fixed order (not for the in-memory digits)
  data.num_workers = 8
  # an image that cannot be decoded: an error naming it, or (True) the next one in its place, logged
  data.skip_corrupt = False
  # each example's context [L, D] for model.context_dim: a tfds feature, or an image_folder's
  # sidecar arrays <image stem>.<context_key>.npy
  data.context_key = ""
  # each example's embedding [D] for model.embedding_dim (the unCLIP decoder): a tfds feature, an
  # image_folder's sidecar arrays <image stem>.<embedding_key>.npy, a packed folder's, or an .npz
  # aligned with the split ("{split}" in the path: the split), e.g. --mode=represent's codes
  data.embedding_key = ""

  # latent diffusion (ddpm_jax/latent.py): a KL autoencoder's run (config.family="autoencoder");
  # data.image_size and data.num_channels are then its latents'
  config.latent = latent = ml_collections.ConfigDict()
  latent.autoencoder_workdir = config_dict.placeholder(str)
  latent.sample_posterior = True  # train on z ~ q(z | x) (LDM's, DiT's), else on its mean
  # the latents' scale (None: the autoencoder's model.scaling_factor, SD-VAE's 0.18215); one of
  # an autoencoder trained here: 1 / the latent_std its --mode=eval reports (LDM's rescaling)
  latent.scaling_factor = config_dict.placeholder(float)

  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"  # or "classifier", the noisy classifier of family "classifier"
  model.ch = 32
  model.out_channels = 1  # data.num_channels, twice that with a learned variance
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.num_heads = 1
  model.num_head_channels = -1  # > 0 overrides num_heads (ADM)
  model.num_heads_upsample = -1  # heads of the up path's attention; -1: num_heads (ADM)
  model.resblock_updown = False  # BigGAN-style residual up/down-sampling (ADM)
  model.scale_shift_norm = False  # AdaGN (ADM)
  model.num_classes = 0  # > 0: class-conditional, with an extra null class …
  model.null_class = True  # … unless False (ADM's models: no classifier-free guidance)
  model.norm_eps = 1e-5  # GroupNorm's ε (diffusers' DDPM checkpoints: 1e-6)
  # strided convolutions' padding: "symmetric" (1 | 1) or "tf" (0 | 1, diffusers' DDPM checkpoints)
  model.downsample_padding = "symmetric"
  # cross-attention to a [B, L, context_dim] context (data.context_key), the zero context as ∅
  model.context_dim = config_dict.placeholder(int)
  # an embedding [B, embedding_dim] of each example (data.embedding_key) added to the time embedding
  # and, as embedding_tokens extra tokens, to the attention's context (unCLIP's decoder, §2.1); the
  # zero embedding as ∅ (family gaussian)
  model.embedding_dim = config_dict.placeholder(int)
  model.embedding_tokens = 0
  # of t (or of the SDE's log σ): "positional" (DDPM's sinusoids) | "adm_positional"
  # (guided-diffusion's) | "fourier"
  model.embedding_type = "positional"
  model.fourier_features = ()  # exponents n of sin/cos(2^n·2π x) input features (VDM: (6, 7))
  # "auto": Winograd 3×3 convolutions where they are faster (CPU, 16×16 and up), else XLA's
  model.conv_impl = "auto"
  # "auto": bfloat16 compute with float32 parameters and optimizer state on GPUs and TPUs, float32
  # on CPUs; or "float32" | "bfloat16"
  model.dtype = "auto"
  # activation checkpointing per residual block: True | False; None (auto): on GPUs and TPUs
  # recompute only the blocks' elementwise work (norms, activations), on CPUs none
  model.remat = config_dict.placeholder(bool)
  # score_sde's DDPM++ / NCSN++ (configs/ddpmpp_cifar10_vp.py, ncsnpp_cifar10_ve.py):
  model.skip_rescale = False  # residual sums (x + h)/√2
  model.fir_kernel = ()  # FIR resampling filter, NCSN++: (1, 3, 3, 1); () = nearest / 2×2 mean
  model.progressive_input = "none"  # "input_skip": the downsampled input added at every down level
  model.progressive = "none"  # "output_skip": the output summed over the up levels (unet only)
  model.ncsnpp_layout = False  # one attention block per up level; projected skips when resampling

  config.optim = optim = ml_collections.ConfigDict()
  optim.lr = 2e-3
  optim.warmup_steps = 100
  optim.grad_clip = 1.0
  optim.beta2 = 0.999  # Adam's second-moment decay
  optim.weight_decay = 0.0  # > 0: AdamW's decoupled weight decay
  optim.ema_decay = 0.999
  optim.grad_accum_steps = 1  # micro-batches per update (same update, less activation memory)

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64
  training.num_train_steps = 3000
  training.log_every_steps = 50
  training.checkpoint_every_steps = 500
  training.eval_every_steps = 1000  # held-out loss of the EMA parameters (eval.num_loss_batches)
  training.sample_every_steps = 1000  # EMA sample grid to workdir/samples and TensorBoard
  training.keep_checkpoints = 3
  training.fsdp = False  # shard params and optimizer state over the data axis
  # a step with a non-finite loss or gradient: "stop" the run, or "skip" its update (counted in the
  # logs), stopping after max_nonfinite_skips such steps in a row
  training.nonfinite = "stop"
  training.max_nonfinite_skips = 10
  # class- and context-conditional models: rate of the null label / zero context (classifier-free
  # guidance)
  training.label_dropout = 0.1
  # start a fresh run from another run's EMA parameters (fine-tuning; a distillation's teacher):
  # its workdir, whose model must be this config's
  training.init_from_workdir = config_dict.placeholder(str)

  # sample grids in training and --mode=sample
  config.sampling = sampling = ml_collections.ConfigDict()
  # family "gaussian": "ddpm" (ancestral) | "ddim" | "dpm_solver", or a σ-space solver on EDM's
  # grid: "euler" | "heun" | "dpmpp_2m" | "euler_ancestral" | "dpmpp_2m_sde" (also family "edm")
  sampling.sampler = "ddim"
  # None: all T (ddpm), 50 (ddim), 20 (dpm_solver), 18 (heun: 35 network calls), 35 (other σ
  # solvers)
  sampling.num_steps = config_dict.placeholder(int)
  # σ-space solvers: EDM's grid between sigma_min and sigma_max (None: the model's range) with
  # ρ, and EDM's stochastic churn (euler, heun)
  sampling.sigma_min = config_dict.placeholder(float)
  sampling.sigma_max = config_dict.placeholder(float)
  sampling.rho = 7.0
  sampling.s_churn = 0.0
  sampling.s_tmin = 0.0
  sampling.s_tmax = float("inf")
  sampling.s_noise = 1.0
  sampling.eta = 0.0  # DDIM: 0 deterministic, 1 ancestral-like
  # ddpm / ddim respaced to num_steps: "default" (ddim: 0, s, 2s, …; ddpm: evenly spaced, both
  # ends) or "trailing" (round(T - iT/n) - 1: ends at T - 1; Lin et al. 2024)
  sampling.timestep_spacing = "default"
  sampling.guidance_scale = 0.0  # classifier-free guidance w (class-conditional models)
  sampling.guidance_rescale = 0.0  # φ of Lin et al. 2024 §3.4: the guided std pulled back (0.7)
  # guide the first this many channels (the rest from the conditional model: facebookresearch/DiT's
  # sample.py guides 3 of its 4 latent channels); 0: all
  sampling.guidance_channels = 0
  sampling.classifier_workdir = config_dict.placeholder(str)  # a run of family "classifier" …
  sampling.classifier_scale = 0.0  # … and its guidance scale s (ADM §4)
  sampling.num_samples = 64
  sampling.labels = ()  # class-conditional grids and --mode=sample: these classes (): all, by row
  # contexts [N, L, D] (.npy, or .npz with "context") of a context-conditional model's samples, in
  # turn; unset: those of data.eval_split's examples in order
  sampling.context_file = config_dict.placeholder(str)
  # an embedding-conditioned decoder (model.embedding_dim) decodes the embeddings a diffusion prior
  # samples (the run in prior_workdir: two-stage generation), else those of embedding_file (.npz of
  # "embeddings" or "embedding", with "labels"), else data.eval_split's
  sampling.prior_workdir = config_dict.placeholder(str)
  sampling.embedding_file = config_dict.placeholder(str)
  sampling.batch_size = 64
  sampling.clip_denoised = True
  # family "score_sde": sampler "pc" (predictor-corrector), "ode" (the probability-flow ODE,
  # adaptive), "annealed_langevin" (NCSN; VE) or a σ-space solver; num_steps: the SDE's steps for
  # pc and annealed_langevin (None: sde.num_scales)
  sampling.predictor = "reverse_diffusion"  # | "euler_maruyama" | "ancestral" | "none"
  sampling.corrector = "langevin"  # | "annealed_langevin" | "none"
  sampling.snr = 0.16  # the correctors' signal-to-noise ratio
  sampling.n_corrector = 1  # corrector steps per predictor step (annealed_langevin: per level)
  sampling.step_lr = 2e-5  # annealed_langevin: NCSN's step size ε
  sampling.ode_tolerance = 1e-5  # ode: rtol = atol of the adaptive solver

  # --mode=edit: inpainting, colorization or SDEdit with config.sampling's sampler (ddpm, ddim,
  # euler, heun, euler_ancestral; a score SDE's pc)
  config.edit = edit = ml_collections.ConfigDict()
  edit.task = "inpaint"  # | "colorize" (colour data) | "sdedit"
  # an npz of uint8 "images" [N, H, W, C] (+ "labels"), a PNG, PNGs "a.png,b.png" or a directory
  # of PNGs; unset: the first num_images of data.eval_split
  edit.input_file = config_dict.placeholder(str)
  edit.num_images = 8
  # inpainting's known pixels: an npz "mask" [N or 1, H, W, 1 or C] or a PNG (white: known);
  # unset: edit.mask's region is unknown, "center" (the middle half square), "right" or "bottom"
  edit.mask_file = config_dict.placeholder(str)
  edit.mask = "center"
  edit.resample = 1  # RePaint: each level revisited `resample` times …
  edit.jump = 1  # … jumping back `jump` levels (RePaint's paper: 10 and 10)
  edit.strength = 0.5  # SDEdit: t0 / T in (0, 1]

  # --mode=interpolate: two images DDIM-encoded (interpolate.input_file as edit.input_file, two
  # images; unset: two latents from config.seed), slerp in num_frames, decoded (η = 0)
  config.interpolate = interpolate = ml_collections.ConfigDict()
  interpolate.input_file = config_dict.placeholder(str)
  interpolate.num_frames = 8
  interpolate.num_steps = config_dict.placeholder(int)  # None: sampling.num_steps, else 50

  # --mode=variations: an embedding-conditioned model's first num_images embeddings (as
  # --mode=sample takes them) each decoded from num_variations noises (unCLIP §3.1)
  config.variations = variations = ml_collections.ConfigDict()
  variations.num_images = 4
  variations.num_variations = 8

  # --mode=eval, and the held-out loss in training
  config.eval = eval_config = ml_collections.ConfigDict()
  eval_config.num_loss_batches = 4  # held-out batches of training.batch_size; 0: none
  # pytorch-fid's pt_inception-2015-12-05-*.pth
  eval_config.inception_path = config_dict.placeholder(str)
  # the FID protocol is 50,000 samples (what papers report); fewer needs this explicit opt-in,
  # and is printed beside the result. The digits are a quick offline check.
  eval_config.num_fid_samples = 1000
  eval_config.allow_fewer_fid_samples = True
  eval_config.num_reference_images = 1500  # the digits' whole train split
  # default: workdir/fid_stats_<data>_<split>_<size>.npz; or an npz with mu/sigma (pytorch-fid's
  # --save-stats), or ADM's reference batch (arr_0, mu, sigma, mu_s, sigma_s)
  eval_config.reference_stats_path = config_dict.placeholder(str)
  # improved precision/recall (k = 3) between the first this many reference and sample features
  eval_config.precision_recall_images = 10_000
  eval_config.bpd_num_batches = 1
  # offline metrics; default: the shipped weights
  eval_config.feature_net_path = config_dict.placeholder(str)
  # for the dataset and size, if any (evaluation/feature_net.py)
  return config


def dit_model(dit_size: str = "S", patch_size: int = 2, **fields) -> ml_collections.ConfigDict:
  """config.model of a DiT (models.DiT's fields; `fields` override, e.g. depth, hidden_size,
  num_heads for a smaller one than Table 4's): replaces the U-Net's block, whose fields it does not
  take."""
  model = ml_collections.ConfigDict()
  model.name = "dit"
  model.dit_size = dit_size  # "S" | "B" | "L" | "XL" (depth, width, heads of the paper's Table 4)
  model.patch_size = patch_size
  model.out_channels = 1  # data.num_channels, twice that with a learned variance
  model.num_classes = 0  # > 0: class-conditional, with the null class ∅ for guidance
  model.null_class = True
  model.depth = config_dict.placeholder(int)  # None: the size's
  model.hidden_size = config_dict.placeholder(int)
  model.num_heads = config_dict.placeholder(int)
  model.mlp_ratio = 4.0
  model.mlp_norm_eps = 1e-6
  model.embedding_type = "adm_positional"  # DiT's sinusoid of t
  model.dtype = "auto"  # bfloat16 on accelerators, float32 on CPUs
  model.remat = config_dict.placeholder(bool)  # per block; None: as the U-Net's
  model.update(fields)
  return model


def autoencoder_model(**fields) -> ml_collections.ConfigDict:
  """config.model of a KL autoencoder (models.AutoencoderKL's fields, the digits' size by default:
  8×8×1 -> 4×4×2; `fields` override): replaces the U-Net's block for config.family="autoencoder"."""
  model = ml_collections.ConfigDict()
  model.name = "autoencoder_kl"
  model.block_out_channels = (32, 64)  # one level each; the factor is 2^(levels - 1)
  model.num_res_blocks = 1
  model.latent_channels = 2
  model.out_channels = 1  # data.num_channels
  model.num_groups = 8
  model.norm_eps = 1e-6
  model.mid_attention = True
  model.quant_conv = True
  model.post_quant_conv = True
  model.scaling_factor = 1.0  # latents' units for a diffusion model: (raw - shift)·scale
  model.shift_factor = 0.0
  model.dtype = "float32"
  model.update(fields)
  return model


def with_family(config: ml_collections.ConfigDict, family: str) -> ml_collections.ConfigDict:
  """`config` (changed in place) training `family`: config.family set, the blocks of the family it
  trained before that the new one does not read removed, the new family's own added with their
  defaults (config.diffusion of "gaussian", "classifier" and "super_res", config.sde of
  "score_sde", config.vdm, config.ardm, config.edm, config.super_res: defaults and ranges beside
  the family's code in ddpm_jax/families/; a block both read is kept as it is), and the shared
  fields whose default the family changes (its SHARED_DEFAULTS, e.g. sampling.sampler) set to it;
  those the previous family changed and that still hold its value go back to the shared default,
  as do the sampler-specific sampling fields (config_validation.SAMPLER_FIELDS: the previous
  family's sampler tuning)."""
  shared = _shared_config()
  if family != config.family:
    for name in config_validation.SAMPLER_FIELDS:
      config.sampling[name] = shared.sampling[name]
  for field, value in _shared_defaults(config.family).items():
    block, name = field.split(".")
    if name not in shared[block]:  # a field only that family reads (model.latent_dim)
      del config[block][name]
    elif config[block][name] == value:
      config[block][name] = shared[block][name]
  blocks = families.config_blocks(family)
  for block in families.all_config_blocks() - set(blocks):
    if block in config:
      del config[block]
  config.family = family
  for block, defaults in blocks.items():
    if block not in config:
      config[block] = defaults()
  for field, value in _shared_defaults(family).items():
    block, name = field.split(".")
    config[block][name] = value
  return config


def _shared_defaults(family: str) -> dict:
  return getattr(families.family_module(family), "SHARED_DEFAULTS", {})
