"""The KL autoencoder of latent diffusion (models/autoencoder_kl.py): a diffusers AutoencoderKL
with random weights converts (`convert.from_diffusers`) into one whose encoder's posterior and
decoder's images equal diffusers' to 1e-4, under both of its checkpoints' attention namings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ddpm_jax import convert, models


def small_diffusers_vae(seed=0, **changes):
  from diffusers import AutoencoderKL

  torch.manual_seed(seed)
  options = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=16,
    scaling_factor=0.5,
  )
  return AutoencoderKL(**{**options, **changes}).eval()


def nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def check_against(reference, model_config, params, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  z = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  model = models.get_model(model_config)
  mean, logvar = model.apply(params, x, method="encode")
  with torch.no_grad():
    posterior = reference.encode(nchw(x)).latent_dist
    decoded = reference.decode(nchw(z)).sample
  np.testing.assert_allclose(mean, nhwc(posterior.mean), atol=1e-4)
  np.testing.assert_allclose(logvar, nhwc(posterior.logvar), atol=1e-4)
  np.testing.assert_allclose(model.apply(params, z, method="decode"), nhwc(decoded), atol=1e-4)


@pytest.mark.parametrize(
  "changes", [{}, {"use_quant_conv": False, "use_post_quant_conv": False, "layers_per_block": 2}]
)
def test_a_converted_diffusers_autoencoder_gives_its_outputs(changes, tmp_path):
  reference = small_diffusers_vae(**changes)
  reference.save_pretrained(tmp_path / "vae")
  model_config, params = convert.from_diffusers(str(tmp_path / "vae"))
  assert model_config.name == "autoencoder_kl" and model_config.scaling_factor == 0.5
  check_against(reference, model_config, params)


def test_the_legacy_attention_names_convert_the_same(tmp_path):
  """sd-vae-ft-mse's safetensors predate diffusers' to_q/…/to_out.0 names: query/…/proj_attn."""
  from safetensors.torch import save_file

  reference = small_diffusers_vae(seed=2)
  reference.save_pretrained(tmp_path / "new")
  legacy = {}
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  for key, value in reference.state_dict().items():
    for new, old in renames.items():
      key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    legacy[key] = value.contiguous()
  (tmp_path / "old").mkdir()
  save_file(legacy, tmp_path / "old" / "diffusion_pytorch_model.safetensors")
  (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
  check_against(reference, *convert.from_diffusers(str(tmp_path / "old")))


def test_the_latent_units_and_unsupported_options(tmp_path):
  """encode_latents / decode_latents are the raw posterior and decoder in (raw - shift)·scale."""
  reference = small_diffusers_vae(seed=3, shift_factor=0.25)
  reference.save_pretrained(tmp_path / "vae")
  model_config, params = convert.from_diffusers(str(tmp_path / "vae"))
  model = models.get_model(model_config)
  x = np.random.default_rng(4).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  mean, logvar = model.apply(params, x, method="encode")
  z_mean, z_logvar = model.apply(params, x, method="encode_latents")
  np.testing.assert_allclose(z_mean, (mean - 0.25) * 0.5, atol=1e-6)
  np.testing.assert_allclose(np.exp(z_logvar), np.exp(logvar) * 0.25, rtol=1e-5)
  np.testing.assert_allclose(
    model.apply(params, z_mean, method="decode_latents"),
    model.apply(params, mean, method="decode"),
    atol=1e-5,
  )
  config = json.loads((tmp_path / "vae" / "config.json").read_text())
  config["up_block_types"] = ["AttnUpDecoderBlock2D"] * 3
  (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="up_block_types=.*supported: UpDecoderBlock2D only"):
    convert.from_diffusers(str(tmp_path / "vae"))


# the released config.json files (stabilityai/sd-vae-ft-mse, as -ema; stabilityai/sdxl-vae)
SD_VAE_CONFIG = {
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.4.2",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D"] * 4,
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 256,
  "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_VAE_CONFIG = dict(
  SD_VAE_CONFIG, _diffusers_version="0.18.0.dev0", sample_size=1024, scaling_factor=0.13025,
  force_upcast=True,
)  # fmt: skip


def test_the_released_autoencoders_by_name(tmp_path):
  """--preset=sd_vae_ft_mse / sdxl_vae: the released config.json files give the presets' models
  (the SD-VAE's scale is diffusers' default, absent from its file); another model is refused."""
  from ddpm_jax.convert import autoencoder_kl, presets

  for preset, released in (("sd_vae_ft_mse", SD_VAE_CONFIG), ("sdxl_vae", SDXL_VAE_CONFIG)):
    model_config = autoencoder_kl.model_config(released)
    presets.check_autoencoder_preset(preset, model_config)
    assert model_config.scaling_factor == {"sd_vae_ft_mse": 0.18215, "sdxl_vae": 0.13025}[preset]
  with pytest.raises(ValueError, match=r"not --preset=sdxl_vae: scaling_factor=0.18215"):
    presets.check_autoencoder_preset("sdxl_vae", autoencoder_kl.model_config(SD_VAE_CONFIG))
  small_diffusers_vae().save_pretrained(tmp_path / "vae")
  with pytest.raises(ValueError, match=r"not --preset=sd_vae_ft_ema: block_out_channels"):
    presets.diffusers_run(str(tmp_path / "vae"), preset="sd_vae_ft_ema")
  with pytest.raises(ValueError, match="another kind of model"):
    presets.diffusers_run(str(tmp_path / "vae"), preset="ddpm_cifar10")


def test_the_autoencoder_halves_per_level_and_initialises():
  model = models.get_model(
    dict(name="autoencoder_kl", block_out_channels=(8, 16), num_groups=4, latent_channels=3)
  )
  x = np.zeros((2, 8, 8, 3), np.float32)
  params = model.init(jax.random.key(0), x)
  mean, logvar = model.apply(params, x, method="encode")
  assert mean.shape == logvar.shape == (2, 4, 4, 3)
  assert model.apply(params, mean, method="decode").shape == x.shape


def autoencoder_config(**changes):
  import sys

  from helpers import REPO

  sys.path.insert(0, REPO)
  from configs import autoencoder_default
  from ddpm_jax.families import config_validation

  config = autoencoder_default.get_config()
  for field, value in changes.items():
    block, name = field.split(".")
    config[block][name] = value
  config_validation.validate_config(config)
  return config


def test_the_kl_term_is_the_gaussians_kl():
  """Closed form against a Monte-Carlo estimate of E_q[log q(z) - log N(z; 0, I)]."""
  from ddpm_jax.families.autoencoder import kl_divergence

  mean, logvar = np.array([[0.5, -1.0, 0.2]]), np.array([[-1.0, 0.3, 0.0]])
  z = mean + np.exp(0.5 * logvar) * np.random.default_rng(0).normal(size=(400_000, 3))
  log_q = -0.5 * ((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi))
  log_p = -0.5 * (z**2 + np.log(2 * np.pi))
  estimate = np.mean(np.sum(log_q - log_p, axis=1))
  assert abs(float(kl_divergence(mean, logvar)[0]) - estimate) < 0.01


def test_the_family_loss_is_reconstruction_plus_kl():
  from ddpm_jax import families
  from ddpm_jax.families.autoencoder import kl_divergence

  config = autoencoder_config(**{"autoencoder.kl_weight": 0.1})
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=-1, maxval=1)
  draws = family.draw(families.step_keys(jax.random.key(2)), {"image": x}, None)
  assert draws["noise"].shape == (3, 4, 4, 2)
  mean, logvar = family.model.apply(params, x, method="encode")
  x_hat = family.model.apply(params, mean + jnp.exp(0.5 * logvar) * draws["noise"], method="decode")
  want = np.mean(np.abs(x - x_hat), axis=(1, 2, 3)) + 0.1 * kl_divergence(mean, logvar) / 64
  np.testing.assert_allclose(family.loss(params, {"image": x}, draws, None), want, rtol=1e-5)


@pytest.mark.slow
def test_each_player_of_the_adversarial_loss_gets_its_own_gradient():
  """One loss, one optimiser: the discriminator's gradient is that of LDM's hinge loss alone, the
  autoencoder's that of reconstruction + λ·L_G with the discriminator held fixed."""
  import flax.linen as nn

  from ddpm_jax import families
  from ddpm_jax.families.autoencoder import PatchDiscriminator, kl_divergence

  config = autoencoder_config(**{"autoencoder.disc_weight": 0.5, "autoencoder.disc_layers": 1})
  family = families.get_family(config)
  params = jax.jit(family.init_params)(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
  draws = family.draw(families.step_keys(jax.random.key(2)), {"image": x}, None)
  # (each gradient compiled: op by op, they took most of a minute)
  gradient = lambda f, at: jax.jit(jax.grad(f))(at)
  grads = gradient(lambda p: family.loss(p, {"image": x}, draws, None).mean(), params)
  disc = PatchDiscriminator(64, 1)
  ae = lambda p: {"params": p["params"]}

  def reconstruction(p):
    mean, logvar = family.model.apply(ae(p), x, method="encode")
    x_hat = family.model.apply(
      ae(p), mean + jnp.exp(0.5 * logvar) * draws["noise"], method="decode"
    )
    rec = jnp.mean(jnp.abs(x - x_hat), axis=(1, 2, 3)) + 1e-6 * kl_divergence(mean, logvar) / 64
    return rec, x_hat

  x_hat = jax.jit(reconstruction)(params)[1]

  def hinge(d):
    real, fake = disc.apply(d, x), disc.apply(d, x_hat)
    return 0.5 * (nn.relu(1 - real).mean(axis=(1, 2)) + nn.relu(1 + fake).mean(axis=(1, 2)))

  want_disc = gradient(lambda d: hinge(d).mean(), params["discriminator"])
  got_disc = grads["discriminator"]
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_disc, want_disc
  )
  generator = lambda p: -disc.apply(params["discriminator"], reconstruction(p)[1]).mean(axis=(1, 2))
  last = ("params", "decoder", "conv_out", "kernel")

  def last_layer_norm(term):
    g = gradient(lambda p: term(p).mean(), params)
    for key in last:
      g = g[key]
    return np.linalg.norm(g)

  weight = last_layer_norm(lambda p: reconstruction(p)[0]) / (last_layer_norm(generator) + 1e-4)
  want_ae = gradient(lambda p: (reconstruction(p)[0] + 0.5 * weight * generator(p)).mean(), params)[
    "params"
  ]
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads["params"], want_ae
  )
  with pytest.raises(ValueError, match="leaves the patch discriminator no patch"):
    autoencoder_config(**{"autoencoder.disc_weight": 0.5, "autoencoder.disc_layers": 3})
  with pytest.raises(ValueError, match=r"latent.scaling_factor=0.5 is read with latent.autoen"):
    autoencoder_config(**{"latent.scaling_factor": 0.5})  # in pixel space: not read
  with pytest.raises(ValueError, match="autoencoder.disc_layers=1 shapes the patch discriminator"):
    autoencoder_config(**{"autoencoder.disc_layers": 1})  # no discriminator: not read


@pytest.mark.extended
def test_the_offline_autoencoder_trains_and_reconstructs(tmp_path):
  """configs/autoencoder_default.py from the command line: trained, its held-out digits come back
  at a PSNR above 24 dB (measured 26.9 at its 1000 steps; 600 here)."""
  import os
  import subprocess
  import sys

  from helpers import REPO

  common = [
    f"--config={REPO}/configs/autoencoder_default.py",
    f"--workdir={tmp_path}",
    "--config.training.num_train_steps=600",
    "--config.training.checkpoint_every_steps=600",
  ]
  for mode in ("train", "eval"):
    result = subprocess.run(
      [sys.executable, "-m", "ddpm_jax.main", f"--mode={mode}", *common],
      cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((tmp_path / "eval_600.json").read_text())
  assert results["psnr"] > 24 and results["latent_std"] > 0, results


def run(*args) -> str:
  from helpers import run_module

  return run_module(*args)


@pytest.mark.slow
def test_latent_families_train_sample_and_evaluate_on_the_offline_autoencoder(tmp_path):
  """The offline autoencoder trains; a flow, a Gaussian and an EDM model train in its 4×4×2
  latents and sample decoded 8×8 digits; the flow and the Gaussian model evaluate against the pixel
  data (feature-FD, the bits/dim of the latents as "latent_bpd"); the digits encoded once from the
  command line train and evaluate a flow."""
  from helpers import REPO

  autoencoder = tmp_path / "autoencoder"
  steps = ["--config.training.num_train_steps=50", "--config.training.checkpoint_every_steps=50"]
  config = f"--config={REPO}/configs/autoencoder_default.py"
  run("ddpm_jax.main", config, f"--workdir={autoencoder}", *steps)
  for config_name in ("flow_default.py", "default.py", "edm_default.py"):
    workdir = tmp_path / config_name
    common = [
      f"--config={REPO}/configs/{config_name}",
      f"--workdir={workdir}",
      f"--config.latent.autoencoder_workdir={autoencoder}",
      "--config.latent.scaling_factor=0.4",
      "--config.data.image_size=4",
      "--config.data.num_channels=2",
      "--config.model.out_channels=2",
      "--config.model.ch_mult=(1,)",
      "--config.training.num_train_steps=10",
      "--config.training.checkpoint_every_steps=10",
      "--config.training.sample_every_steps=10",
      "--config.sampling.num_samples=16",
      "--config.sampling.batch_size=16",
      "--config.sampling.num_steps=4",
      "--config.eval.num_fid_samples=16",
      "--config.sampling.clip_denoised=False",
      f"--config.eval.bpd_num_batches={int(config_name != 'edm_default.py')}",  # EDM: none
      "--config.data.num_workers=0",
    ]
    # --mode=sample is the same job for every family (once here; the pipeline samples each), and
    # so is --mode=eval but for the likelihood of the latents (the flow's and the Gaussian's)
    modes = {"flow_default.py": ("train", "sample", "eval"), "default.py": ("train", "eval")}
    modes = modes.get(config_name, ("train",))
    for mode in modes:
      logs = run("ddpm_jax.main", f"--mode={mode}", *common)
      assert logs.count("Loaded the autoencoder") == 1, mode  # once for all its consumers
    if "sample" in modes:
      samples = np.load(workdir / "samples" / "samples_10.npz")["images"]
      assert samples.shape == (16, 8, 8, 1) and samples.dtype == np.uint8
    import ddpm_jax  # the pipeline decodes too

    assert ddpm_jax.load(str(workdir)).sample(2).shape == (2, 8, 8, 1)
    assert (workdir / "samples" / "ema_step_00000010.png").exists()  # (training's decoded grid)
    if "eval" in modes:  # the likelihood of the latents, named as such
      results = json.loads((workdir / "eval_10.json").read_text())
      assert np.isfinite(results["feature_fd"]) and np.isfinite(results["loss"]), results
      assert np.isfinite(results["latent_bpd"]) and "bpd" not in results, results
  # the digits encoded once (both splits), a flow trained on the cached latents
  for split in ("train", "test"):
    run("ddpm_jax.dataset_tool", f"--encode_with={autoencoder}", "--dataset=digits",
        f"--split={split}", f"--out={tmp_path / 'latents'}")  # fmt: skip
  workdir = tmp_path / "cached"
  common[:2] = [f"--config={REPO}/configs/flow_default.py", f"--workdir={workdir}"]
  common += ["--config.data.dataset=latents", f"--config.data.data_dir={tmp_path / 'latents'}"]
  for mode in ("train", "eval"):
    run("ddpm_jax.main", f"--mode={mode}", *common)
  results = json.loads((workdir / "eval_10.json").read_text())
  assert np.isfinite(results["feature_fd"]) and np.isfinite(results["loss"]), results


@pytest.mark.slow
def test_a_converted_dit_and_vae_sample_images(tmp_path):
  """A diffusers AutoencoderKL converts into an autoencoder workdir, and a facebookresearch/DiT
  checkpoint with it (--autoencoder_workdir) into a workdir whose samples are its decoded latents:
  16×16 RGB images of the DiT's 8×8×4 latents (random weights, small sizes); a diffusers DiT
  pipeline with its vae/ converts in one step into the same kind of workdir."""
  sys_path_tests()
  from test_dit import as_facebook_state_dict, equal_embedder_copies, small_diffusers_dit

  two_levels = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
  )
  small_diffusers_vae(**two_levels).save_pretrained(tmp_path / "vae")
  run("ddpm_jax.convert", "--source=diffusers", f"--checkpoint={tmp_path / 'vae'}",
      f"--workdir={tmp_path / 'vae_workdir'}")  # fmt: skip
  # DiT-S's width (6 heads of 64, a size of Table 4, whose heads the converter knows), one block
  reference = equal_embedder_copies(small_diffusers_dit(heads=6, head_width=64, depth=1))
  state_dict = {k: torch.from_numpy(v) for k, v in as_facebook_state_dict(reference).items()}
  torch.save(state_dict, tmp_path / "dit.pt")
  run("ddpm_jax.convert", "--source=dit", f"--checkpoint={tmp_path / 'dit.pt'}",
      f"--autoencoder_workdir={tmp_path / 'vae_workdir'}", "--dataset=image_folder",
      f"--workdir={tmp_path / 'dit'}")  # fmt: skip
  workdir = tmp_path / "dit"
  run("ddpm_jax.main", "--mode=sample", f"--config=workdir:{workdir}",
      f"--workdir={workdir}", "--config.sampling.num_samples=2", "--config.sampling.batch_size=2",
      "--config.sampling.num_steps=3")  # fmt: skip
  samples = np.load(workdir / "samples" / "samples_0.npz")
  assert samples["images"].shape == (2, 16, 16, 3) and set(samples["labels"]) <= set(range(10))
  # a diffusers latent pipeline (transformer/, vae/, scheduler/) in one conversion
  from diffusers import DDIMScheduler

  pipeline = tmp_path / "pipeline"
  equal_embedder_copies(small_diffusers_dit()).save_pretrained(pipeline / "transformer")
  small_diffusers_vae(**two_levels).save_pretrained(pipeline / "vae")
  DDIMScheduler(num_train_timesteps=50).save_config(pipeline / "scheduler")
  (pipeline / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
  workdir = tmp_path / "dit_pipeline"
  run("ddpm_jax.convert", "--source=diffusers", f"--checkpoint={pipeline}", f"--workdir={workdir}")
  assert (workdir / "autoencoder" / "config.json").exists()
  import ddpm_jax

  pipe = ddpm_jax.load(str(workdir))
  assert pipe.config.latent.autoencoder_workdir == str(workdir / "autoencoder")
  images = pipe.sample(2, num_steps=3, labels=[1, 2])
  assert images.shape == (2, 16, 16, 3)


def sys_path_tests():
  import os
  import sys

  sys.path.insert(0, os.path.dirname(__file__))
