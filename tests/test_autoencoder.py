"""The KL autoencoder of latent diffusion (models/autoencoder_kl.py): a diffusers AutoencoderKL
with random weights converts (`convert.from_diffusers`) into one whose encoder's posterior and
decoder's images equal diffusers' to 1e-4, under both of its checkpoints' attention namings."""

import json

import jax
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


def test_the_autoencoder_halves_per_level_and_initialises():
  model = models.get_model(
    dict(name="autoencoder_kl", block_out_channels=(8, 16), num_groups=4, latent_channels=3)
  )
  x = np.zeros((2, 8, 8, 3), np.float32)
  params = model.init(jax.random.key(0), x)
  mean, logvar = model.apply(params, x, method="encode")
  assert mean.shape == logvar.shape == (2, 4, 4, 3)
  assert model.apply(params, mean, method="decode").shape == x.shape
