"""The converters: each source's weight mapping (numpy only, one module per source) checked
against the model it targets, whose parameter shapes come from `jax.eval_shape` of its init.

  model_config, params = convert.from_guided_diffusion(state_dict_or_path, **create_model_kwargs)
  out = models.get_model(model_config).apply(params, x_nhwc, t, y)   # = the reference's, NHWC
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from ddpm_jax import models
from ddpm_jax.convert import autoencoder_kl, diffusers, dit, guided_diffusion
from ddpm_jax.convert.torch_layout import MappedWeights, Params, shape_mismatches


def fitted(weights: MappedWeights) -> tuple[ml_collections.ConfigDict, Params]:
  """(model_config, {"params": …}), or one error naming the missing and unexpected keys and the
  shapes that differ from the model's."""
  reader = weights.reader
  model = models.get_model(weights.model_config)
  inputs = (np.zeros((1, *weights.input_shape), np.float32), np.zeros((1,), np.int32))
  inputs = inputs if weights.takes_time else inputs[:1]
  expected = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  unexpected = sorted(set(reader.state_dict) - reader.used)
  mismatched = []
  if not reader.missing:
    mismatched = [
      f"{key}: checkpoint {got}, model {wanted}"
      for key, got, wanted in shape_mismatches(weights.params, expected)
    ]
  if reader.missing or unexpected or mismatched:
    lines = [f"The state dict does not fit {weights.what}:"]
    if reader.missing:
      lines.append(f"  missing keys ({len(reader.missing)}): {', '.join(reader.missing[:20])}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if mismatched:
      lines.append(f"  shapes that differ ({len(mismatched)}): " + "; ".join(mismatched[:20]))
    lines.append("Check the model flags (or --preset) against the checkpoint's.")
    raise ValueError("\n".join(lines))
  return weights.model_config, {"params": weights.params}


def from_guided_diffusion(state_dict_or_path, **create_model_kwargs):
  """openai/guided-diffusion's (and improved-diffusion's) UNetModel weights -> (model_config,
  params). `create_model_kwargs`: `script_util.create_model`'s (image_size, num_channels,
  num_res_blocks, channel_mult, learn_sigma, class_cond, attention_resolutions, num_heads,
  num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown, use_fp16,
  use_new_attention_order, use_checkpoint)."""
  return fitted(guided_diffusion.unet_weights(state_dict_or_path, **create_model_kwargs))


def from_guided_diffusion_super_res(state_dict_or_path, **sr_create_model_kwargs):
  """guided-diffusion's upsamplers (SuperResModel) -> (model_config, params) of the U-Net on
  `super_res.model_input(x_t, low_res)`, the 2C channels SuperResModel concatenates: the
  super_res family's model (config.super_res.low_res_size = small_size).

  `sr_create_model_kwargs`: `script_util.sr_create_model`'s (large_size, small_size,
  num_channels, num_res_blocks, learn_sigma, class_cond, attention_resolutions, num_heads,
  num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown,
  use_fp16, use_checkpoint), and `channel_mult` for a large_size it has none for."""
  return fitted(guided_diffusion.super_res_weights(state_dict_or_path, **sr_create_model_kwargs))


def from_guided_diffusion_classifier(state_dict_or_path, **create_classifier_kwargs):
  """guided-diffusion's noisy classifier (EncoderUNetModel with attention pooling) ->
  (model_config, params) of `models.NoisyClassifier`: `apply(params, x_t, t)` = its logits.
  Kwargs: `script_util.create_classifier`'s (image_size, classifier_width, classifier_depth,
  classifier_attention_resolutions, classifier_use_scale_shift_norm, classifier_resblock_updown,
  classifier_pool, classifier_use_fp16)."""
  weights = guided_diffusion.classifier_weights(state_dict_or_path, **create_classifier_kwargs)
  return fitted(weights)


# a diffusers directory's config.json "_class_name" -> its weight mapping
DIFFUSERS_MODELS = {
  "UNet2DModel": diffusers.unet_weights,
  "DiTTransformer2DModel": dit.diffusers_dit_weights,
  "AutoencoderKL": autoencoder_kl.diffusers_weights,
}
# a pipeline directory's sub-folders holding the denoiser, in the order they are looked for
PIPELINE_DENOISERS = ("unet", "transformer")


def diffusers_model_dir(model_dir: str) -> str:
  """The model directory of `model_dir`: itself where it holds a config.json, else a pipeline's
  denoiser sub-folder."""
  if os.path.exists(os.path.join(model_dir, "config.json")):
    return model_dir
  for sub in PIPELINE_DENOISERS:
    if os.path.exists(os.path.join(model_dir, sub, "config.json")):
      return os.path.join(model_dir, sub)
  raise ValueError(
    f"{model_dir} holds no config.json, nor does any of its {', '.join(PIPELINE_DENOISERS)}/: not "
    "a diffusers model or pipeline directory."
  )


def from_diffusers(model_dir: str):
  """A diffusers model saved by `save_pretrained` (config.json + safetensors or .bin), or a
  pipeline directory of one -> (model_config, params), by its config's "_class_name":
  - `UNet2DModel`: the DDPM checkpoints' conventions (downsample_padding=0 as TF's asymmetric
    padding, norm_eps 1e-6, the time embedding's flip_sin_to_cos / freq_shift);
  - `DiTTransformer2DModel`: `models.DiT` (convert/dit.py);
  - `AutoencoderKL`: `models.AutoencoderKL` (convert/autoencoder_kl.py; a pipeline's vae/ is read
    by naming that sub-folder)."""
  model_dir = diffusers_model_dir(model_dir)
  with open(os.path.join(model_dir, "config.json")) as f:
    class_name = json.load(f).get("_class_name", "UNet2DModel")
  if class_name not in DIFFUSERS_MODELS:
    raise ValueError(
      f"{model_dir} holds a {class_name}; the converter reads {', '.join(DIFFUSERS_MODELS)}."
    )
  return fitted(DIFFUSERS_MODELS[class_name](model_dir))


def from_dit(state_dict_or_path, **kwargs):
  """facebookresearch/DiT's checkpoints (DiT-XL-2-256x256.pt, …: a state dict, a training
  checkpoint's dict with "ema", or a .pt path read with weights_only) -> (model_config, params) of
  `models.DiT`; its sizes are read from the weights (kwargs: num_heads, for a width not in the
  paper's Table 4)."""
  return fitted(dit.dit_weights(state_dict_or_path, **kwargs))
