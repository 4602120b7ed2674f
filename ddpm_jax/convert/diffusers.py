"""diffusers' UNet2DModel (a directory written by `save_pretrained`: config.json + safetensors or
.bin) -> this project's U-Net's parameter tree, 1:1 and with numpy only (`fit.from_diffusers`
checks it against the model)."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from safetensors.numpy import load_file

from ddpm_jax.convert.torch_layout import MappedWeights, Params, Reader, load_state_dict

# diffusers' Timesteps(flip_sin_to_cos, downscale_freq_shift) -> this project's embedding
_DIFFUSERS_EMBEDDINGS = {(False, 1): "positional", (True, 0): "adm_positional"}


def diffusers_model_config(unet_config: dict) -> ml_collections.ConfigDict:
  """A UNet2DModel's config.json -> this project's `config.model` of the same network (the options
  the DDPM checkpoints and ADM-like UNet2DModels use; others are refused by name)."""
  c = dict(unet_config)
  channels = list(c["block_out_channels"])
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  problems = []
  if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or set(up) - {"UpBlock2D", "AttnUpBlock2D"}:
    problems.append(f"block types {down} / {up} (supported: (Attn)DownBlock2D, (Attn)UpBlock2D)")
  if [t.startswith("Attn") for t in down] != [t.startswith("Attn") for t in reversed(up)]:
    problems.append(f"attention in the down blocks {down} and the up blocks {up} do not mirror")
  embedding = _DIFFUSERS_EMBEDDINGS.get(
    (bool(c.get("flip_sin_to_cos", True)), int(c.get("freq_shift", 0)))
  )
  if embedding is None:
    problems.append(
      f"flip_sin_to_cos={c.get('flip_sin_to_cos')} with freq_shift={c.get('freq_shift')}"
    )
  for field, wanted in (
    ("time_embedding_type", "positional"),
    ("center_input_sample", False),
    ("act_fn", "silu"),
    ("norm_num_groups", 32),
    ("class_embed_type", None),
    ("num_class_embeds", None),
    ("add_attention", True),
    # with "scale_shift" its middle attention has no GroupNorm, unlike every other block
    ("resnet_time_scale_shift", "default"),
  ):
    if c.get(field, wanted) != wanted:
      problems.append(f"{field}={c[field]!r} (supported: {wanted!r})")
  if channels[0] and any(ch % channels[0] for ch in channels):
    problems.append(f"block_out_channels {channels} are not multiples of the first")
  if problems:
    raise ValueError(
      "This UNet2DModel has options the converter does not support: " + "; ".join(problems) + "."
    )
  size, head_dim = c["sample_size"], c.get("attention_head_dim")
  return ml_collections.ConfigDict(
    dict(
      name="unet",
      ch=channels[0],
      out_channels=c["out_channels"],
      ch_mult=tuple(ch // channels[0] for ch in channels),
      num_res_blocks=c["layers_per_block"],
      attn_resolutions=tuple(size // 2**i for i, t in enumerate(down) if t.startswith("Attn")),
      dropout=float(c.get("dropout", 0.0)),
      num_heads=1,
      num_head_channels=head_dim if head_dim else -1,
      embedding_type=embedding,
      norm_eps=float(c.get("norm_eps", 1e-5)),
      downsample_padding="tf" if c.get("downsample_padding", 1) == 0 else "symmetric",
      dtype="float32",
    )
  )


DIFFUSERS_RES_BLOCK_NAMES = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")


def _diffusers_params(reader: Reader, model_config, num_levels: int) -> Params:
  def res_block(prefix: str) -> Params:
    return reader.res_block(prefix, DIFFUSERS_RES_BLOCK_NAMES)

  def attention(prefix: str) -> Params:
    q, k, v = (reader.dense(f"{prefix}.to_{name}") for name in "qkv")
    qkv = None
    if None not in (q, k, v):  # one [C, 3C] projection, (q|k|v, head, channel)
      qkv = {key: np.concatenate([q[key], k[key], v[key]], axis=-1) for key in ("kernel", "bias")}
    return {
      "GroupNorm_0": reader.norm(f"{prefix}.group_norm"),
      "qkv": qkv,
      "proj_out": reader.dense(f"{prefix}.to_out.0"),
    }

  params = {
    "conv_in": reader.conv("conv_in"),
    "embedding": {
      "Dense_0": reader.dense("time_embedding.linear_1"),
      "Dense_1": reader.dense("time_embedding.linear_2"),
    },
    "mid_0": res_block("mid_block.resnets.0"),
    "mid_attn": attention("mid_block.attentions.0"),
    "mid_1": res_block("mid_block.resnets.1"),
    "norm_out": reader.norm("conv_norm_out"),
    "conv_out": reader.conv("conv_out"),
  }
  for level in range(num_levels):
    attn = f"down_blocks.{level}.attentions.0.to_q.weight" in reader.state_dict
    for i in range(model_config.num_res_blocks):
      params[f"down_{level}_{i}"] = res_block(f"down_blocks.{level}.resnets.{i}")
      if attn:
        params[f"down_{level}_{i}_attn"] = attention(f"down_blocks.{level}.attentions.{i}")
    if level != num_levels - 1:
      params[f"down_{level}_resample"] = {
        "Conv_0": reader.conv(f"down_blocks.{level}.downsamplers.0.conv")
      }
  for block, level in enumerate(reversed(range(num_levels))):
    attn = f"up_blocks.{block}.attentions.0.to_q.weight" in reader.state_dict
    for i in range(model_config.num_res_blocks + 1):
      params[f"up_{level}_{i}"] = res_block(f"up_blocks.{block}.resnets.{i}")
      if attn:
        params[f"up_{level}_{i}_attn"] = attention(f"up_blocks.{block}.attentions.{i}")
    if level:
      params[f"up_{level}_resample"] = {
        "Conv_0": reader.conv(f"up_blocks.{block}.upsamplers.0.conv")
      }
  return params


def load_diffusers_weights(model_dir: str) -> dict[str, np.ndarray]:
  """diffusion_pytorch_model.safetensors (read without torch) or .bin (torch, weights_only)."""

  safetensors_path = os.path.join(model_dir, "diffusion_pytorch_model.safetensors")
  if os.path.exists(safetensors_path):
    return load_state_dict(load_file(safetensors_path))
  bin_path = os.path.join(model_dir, "diffusion_pytorch_model.bin")
  if os.path.exists(bin_path):
    return load_state_dict(bin_path)
  raise FileNotFoundError(
    f"No diffusion_pytorch_model.safetensors or .bin in {model_dir} (a UNet2DModel directory "
    "written by save_pretrained; for a pipeline, its unet/ sub-folder)."
  )


def unet_weights(model_dir: str) -> MappedWeights:
  """A `UNet2DModel` directory's weights on this project's U-Net (`fit.from_diffusers`)."""

  with open(os.path.join(model_dir, "config.json")) as f:
    unet_config = json.load(f)
  model_config = diffusers_model_config(unet_config)
  reader = Reader(load_diffusers_weights(model_dir))
  params = _diffusers_params(reader, model_config, len(model_config.ch_mult))
  size, channels = unet_config["sample_size"], unet_config["in_channels"]
  return MappedWeights(
    model_config, params, reader, (size, size, channels), f"UNet2DModel in {model_dir}"
  )
