"""diffusers' AutoencoderKL (the SD-VAE and its kin: a directory written by `save_pretrained`,
config.json + safetensors or .bin) -> `models.AutoencoderKL`'s parameter tree, with numpy only
(`fit.from_diffusers` checks it against the model). Both attention namings are read: to_q / to_k /
to_v / to_out.0, and query / key / value / proj_attn of checkpoints saved before diffusers 0.14
(the released sd-vae-ft-mse / -ema)."""

from __future__ import annotations

import json
import os

import ml_collections

from ddpm_jax.convert.diffusers import load_diffusers_weights
from ddpm_jax.convert.torch_layout import MappedWeights, Params, Reader

# diffusers' names of a time-free ResnetBlock2D's layers = models.autoencoder_kl.ResnetBlock's
_RES_LAYERS = {"norm1": "norm", "conv1": "conv", "norm2": "norm", "conv2": "conv"}
# (new, legacy) names of the middle attention's layers
_ATTENTION_LAYERS = {
  "to_q": ("to_q", "query"),
  "to_k": ("to_k", "key"),
  "to_v": ("to_v", "value"),
  "to_out": ("to_out.0", "proj_attn"),
}


def model_config(vae_config: dict) -> ml_collections.ConfigDict:
  """An AutoencoderKL's config.json -> `config.model` of `models.AutoencoderKL` (the SD-VAE's
  options; others are refused by name)."""
  c = dict(vae_config)
  problems = []
  for field, wanted in (
    ("down_block_types", "DownEncoderBlock2D"),
    ("up_block_types", "UpDecoderBlock2D"),
  ):
    if set(c.get(field, [wanted])) != {wanted}:
      problems.append(f"{field}={c[field]} (supported: {wanted} only)")
  for field, wanted in (("act_fn", "silu"), ("latents_mean", None), ("latents_std", None)):
    if c.get(field, wanted) != wanted:
      problems.append(f"{field}={c[field]!r} (supported: {wanted!r})")
  if problems:
    raise ValueError(
      "This AutoencoderKL has options the converter does not support: " + "; ".join(problems) + "."
    )
  if c.get("in_channels", 3) != c.get("out_channels", 3):
    raise ValueError(
      f"This AutoencoderKL reads {c['in_channels']} channels and writes {c['out_channels']}; the "
      "converter takes autoencoders of images (equal channels)."
    )
  return ml_collections.ConfigDict(
    dict(
      name="autoencoder_kl",
      block_out_channels=tuple(c.get("block_out_channels", (64,))),
      num_res_blocks=int(c.get("layers_per_block", 1)),
      latent_channels=int(c.get("latent_channels", 4)),
      out_channels=int(c.get("out_channels", 3)),
      num_groups=int(c.get("norm_num_groups", 32)),
      mid_attention=bool(c.get("mid_block_add_attention", True)),
      quant_conv=bool(c.get("use_quant_conv", True)),
      post_quant_conv=bool(c.get("use_post_quant_conv", True)),
      scaling_factor=float(c.get("scaling_factor", 0.18215)),
      shift_factor=float(c.get("shift_factor") or 0.0),
      dtype="float32",
    )
  )


def _res_block(reader: Reader, prefix: str) -> Params:
  block = {name: getattr(reader, kind)(f"{prefix}.{name}") for name, kind in _RES_LAYERS.items()}
  if f"{prefix}.conv_shortcut.weight" in reader.state_dict:  # a 1×1 conv, as a Dense
    block["conv_shortcut"] = reader.dense(f"{prefix}.conv_shortcut")
  return block


def _attention(reader: Reader, prefix: str) -> Params:
  def layer(new: str, legacy: str) -> Params | None:
    legacy_key = f"{prefix}.{legacy}.weight"
    use = legacy if legacy_key in reader.state_dict else new
    return reader.dense(f"{prefix}.{use}")

  attention = {name: layer(*names) for name, names in _ATTENTION_LAYERS.items()}
  return {"group_norm": reader.norm(f"{prefix}.group_norm"), **attention}


def _mid_block(reader: Reader, prefix: str, attention: bool) -> Params:
  block = {f"resnets_{i}": _res_block(reader, f"{prefix}.resnets.{i}") for i in range(2)}
  if attention:
    block["attention"] = _attention(reader, f"{prefix}.attentions.0")
  return block


def _params(reader: Reader, config: ml_collections.ConfigDict) -> Params:
  levels, blocks = len(config.block_out_channels), config.num_res_blocks
  encoder = {"conv_in": reader.conv("encoder.conv_in")}
  for level in range(levels):
    for i in range(blocks):
      encoder[f"down_{level}_{i}"] = _res_block(reader, f"encoder.down_blocks.{level}.resnets.{i}")
    if level != levels - 1:
      encoder[f"down_{level}"] = reader.conv(f"encoder.down_blocks.{level}.downsamplers.0.conv")
  decoder = {"conv_in": reader.conv("decoder.conv_in")}
  for block in range(levels):
    for i in range(blocks + 1):
      decoder[f"up_{block}_{i}"] = _res_block(reader, f"decoder.up_blocks.{block}.resnets.{i}")
    if block != levels - 1:
      decoder[f"up_{block}"] = {
        "Conv_0": reader.conv(f"decoder.up_blocks.{block}.upsamplers.0.conv")
      }
  for name, part in (("encoder", encoder), ("decoder", decoder)):
    part["mid"] = _mid_block(reader, f"{name}.mid_block", config.mid_attention)
    part["norm_out"] = reader.norm(f"{name}.conv_norm_out")
    part["conv_out"] = reader.conv(f"{name}.conv_out")
  params = {"encoder": encoder, "decoder": decoder}
  if config.quant_conv:
    params["quant"] = reader.dense("quant_conv")
  if config.post_quant_conv:
    params["post_quant"] = reader.dense("post_quant_conv")
  return params


def diffusers_weights(model_dir: str) -> MappedWeights:
  """An `AutoencoderKL` directory's weights on `models.AutoencoderKL` (`fit.from_diffusers`)."""
  with open(os.path.join(model_dir, "config.json")) as f:
    vae_config = json.load(f)
  config = model_config(vae_config)
  reader = Reader(load_diffusers_weights(model_dir))
  size = 2 ** len(config.block_out_channels)  # the shapes of the parameters do not depend on it
  return MappedWeights(
    config,
    _params(reader, config),
    reader,
    (size, size, int(vae_config.get("in_channels", 3))),
    f"AutoencoderKL in {model_dir}",
    takes_time=False,
  )
