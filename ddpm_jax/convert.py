"""Released checkpoints -> (model_config, params) of this project's models, 1:1:

  model_config, params = convert.from_guided_diffusion(state_dict_or_path, **create_model_kwargs)
  out = models.get_model(model_config).apply(params, x_nhwc, t, y)   # = the reference's, NHWC

`create_model_kwargs` are guided-diffusion's `script_util.create_model` arguments (the flags its
README gives for each released model). A `.pt` path is read with `torch.load(weights_only=True)`,
so that a checkpoint never runs code; fp16-trained checkpoints are read as float32.

Layouts: PyTorch convolutions [O, I, kh, kw] become HWIO kernels, linear layers and 1×1 (1-D)
convolutions [O, I] become [I, O] Dense kernels; ADM's attention keeps q, k, v as one [3C]
projection ordered (head, q|k|v, channel) in its legacy order and (q|k|v, head, channel) in the new
one, which is this project's (`layers.AttentionBlock`).
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

Params = dict[str, Any]

# guided_diffusion.script_util.create_model's defaults
GUIDED_DIFFUSION_DEFAULTS = dict(
  channel_mult="",
  learn_sigma=False,
  class_cond=False,
  use_checkpoint=False,
  attention_resolutions="16",
  num_heads=1,
  num_head_channels=-1,
  num_heads_upsample=-1,
  use_scale_shift_norm=False,
  dropout=0.0,
  resblock_updown=False,
  use_fp16=False,
  use_new_attention_order=False,
)
# create_model's channel_mult for channel_mult=""
DEFAULT_CHANNEL_MULT = {
  512: (0.5, 1, 1, 2, 2, 4, 4),
  256: (1, 1, 2, 2, 4, 4),
  128: (1, 1, 2, 3, 4),
  64: (1, 2, 3, 4),
}
NUM_CLASSES = 1000  # guided_diffusion.script_util.NUM_CLASSES


def load_state_dict(state_dict_or_path) -> dict[str, np.ndarray]:
  """A state dict as float32 numpy arrays: a dict (of torch tensors or arrays) or a `.pt` path,
  read without unpickling code (`torch.load(weights_only=True)`)."""
  if isinstance(state_dict_or_path, dict):
    state_dict = state_dict_or_path
  else:
    import pickle

    import torch  # only to read the .pt container: the `torch` extra

    try:
      state_dict = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise ValueError(
        f"{state_dict_or_path} needs pickled Python objects beyond tensors, which could run code "
        "when loaded; refusing it (only plain state dicts of tensors are read). Re-save its "
        f"state_dict() on a trusted machine. ({e})"
      ) from None
  out = {}
  for key, value in state_dict.items():
    array = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value)
    out[key] = array.astype(np.float32)
  return out


def _parse_ints(value) -> tuple:
  if isinstance(value, str):
    return tuple(float(v) if "." in v else int(v) for v in value.split(",") if v)
  return tuple(value)


def guided_diffusion_model_config(**kwargs) -> ml_collections.ConfigDict:
  """create_model's arguments -> this project's `config.model` of the same UNetModel."""
  options = {**GUIDED_DIFFUSION_DEFAULTS, **kwargs}
  unknown = sorted(
    set(options) - set(GUIDED_DIFFUSION_DEFAULTS) - {"image_size", "num_channels", "num_res_blocks"}
  )
  if unknown:
    raise ValueError(f"Unknown create_model arguments {unknown}.")
  size = options["image_size"]
  mult = _parse_ints(options["channel_mult"]) or DEFAULT_CHANNEL_MULT.get(size)
  if mult is None:
    raise ValueError(f"No default channel_mult for image_size={size}: give channel_mult.")
  # create_model's resolutions (it stores them as downsampling rates image_size // r)
  attention = tuple(int(r) for r in _parse_ints(options["attention_resolutions"]))
  return ml_collections.ConfigDict(
    dict(
      name="unet",
      ch=options["num_channels"],
      out_channels=6 if options["learn_sigma"] else 3,
      ch_mult=mult,
      num_res_blocks=options["num_res_blocks"],
      attn_resolutions=attention,
      dropout=float(options["dropout"]),
      num_heads=options["num_heads"],
      num_head_channels=options["num_head_channels"],
      num_heads_upsample=options["num_heads_upsample"],
      resblock_updown=options["resblock_updown"],
      scale_shift_norm=options["use_scale_shift_norm"],
      num_classes=NUM_CLASSES if options["class_cond"] else 0,
      null_class=False,
      embedding_type="adm_positional",
      # the fp16 checkpoints' weights are read as float32; compute in bfloat16 by choice
      dtype="float32",
    )
  )


def _conv(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]


def _dense(w: np.ndarray) -> np.ndarray:
  return w.reshape(w.shape[0], w.shape[1]).T  # [O, I] or [O, I, 1] (1-D conv) -> [I, O]


def _legacy_qkv(w: np.ndarray, heads: int) -> np.ndarray:
  """QKVAttentionLegacy's (head, q|k|v, channel) rows -> QKVAttention's (q|k|v, head, channel)."""
  rest = w.shape[1:]
  return w.reshape(heads, 3, -1, *rest).swapaxes(0, 1).reshape(w.shape)


# a residual block's layers: in norm, in conv, embedding projection, out norm, out conv, skip
GUIDED_RES_BLOCK_NAMES = (
  "in_layers.0",
  "in_layers.2",
  "emb_layers.1",
  "out_layers.0",
  "out_layers.3",
  "skip_connection",
)
DIFFUSERS_RES_BLOCK_NAMES = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")


class _Reader:
  """Takes entries of a state dict by name, so that what is left over can be reported."""

  def __init__(self, state_dict: dict[str, np.ndarray]):
    self.state_dict, self.used = state_dict, set()
    self.missing: list[str] = []

  def take(self, key: str) -> np.ndarray | None:
    if key not in self.state_dict:
      self.missing.append(key)
      return None
    self.used.add(key)
    return self.state_dict[key]

  def layer(self, prefix: str, weight_name: str, layout=lambda w: w) -> Params | None:
    """{weight_name: layout(prefix.weight), "bias": prefix.bias}; None where either is missing."""
    weight, bias = self.take(f"{prefix}.weight"), self.take(f"{prefix}.bias")
    return None if weight is None or bias is None else {weight_name: layout(weight), "bias": bias}

  def conv(self, prefix: str) -> Params | None:
    return self.layer(prefix, "kernel", _conv)

  def dense(self, prefix: str) -> Params | None:
    return self.layer(prefix, "kernel", _dense)

  def norm(self, prefix: str) -> Params | None:
    return self.layer(prefix, "scale")

  def res_block(self, prefix: str, names: tuple[str, ...] | None = None) -> Params:
    """A `layers.ResBlock` from the torch block's (in norm, in conv, embedding projection, out
    norm, out conv, skip projection) names, guided-diffusion's by default."""
    in_norm, in_conv, emb, out_norm, out_conv, skip = names or GUIDED_RES_BLOCK_NAMES
    block = {
      "GroupNorm_0": self.norm(f"{prefix}.{in_norm}"),
      "Conv_0": self.conv(f"{prefix}.{in_conv}"),
      "Dense_0": self.dense(f"{prefix}.{emb}"),
      "GroupNorm_1": self.norm(f"{prefix}.{out_norm}"),
      "Conv_1": self.conv(f"{prefix}.{out_conv}"),
    }
    if f"{prefix}.{skip}.weight" in self.state_dict:
      block["skip"] = self.dense(f"{prefix}.{skip}")
    return block

  def attention(self, prefix: str, heads: int, legacy: bool) -> Params:
    qkv = self.dense(f"{prefix}.qkv")
    if legacy and qkv is not None:  # columns of the [I, 3C] kernel, entries of the bias
      qkv = {
        "kernel": _legacy_qkv(qkv["kernel"].T, heads).T,
        "bias": _legacy_qkv(qkv["bias"], heads),
      }
    return {
      "GroupNorm_0": self.norm(f"{prefix}.norm"),
      "qkv": qkv,
      "proj_out": self.dense(f"{prefix}.proj_out"),
    }


def _heads(model_config, channels: int, upsampling: bool) -> int:
  from ddpm_jax.models import layers

  heads = model_config.num_heads
  if upsampling and model_config.num_heads_upsample > 0:
    heads = model_config.num_heads_upsample
  return layers.num_attention_heads(channels, heads, model_config.num_head_channels)


def _encoder_blocks(model_config, image_size: int) -> Iterator[tuple[str, str, str, int]]:
  """guided-diffusion's input and middle blocks in construction order: (torch prefix, our module
  name, kind, channels) with kind "res" | "attn" | "down" | "res_down"."""
  ch, mult = model_config.ch, model_config.ch_mult
  attn, blocks = model_config.attn_resolutions, model_config.num_res_blocks
  index, size = 1, image_size
  for level, m in enumerate(mult):
    for i in range(blocks):
      yield f"input_blocks.{index}.0", f"down_{level}_{i}", "res", int(ch * m)
      if size in attn:
        yield f"input_blocks.{index}.1", f"down_{level}_{i}_attn", "attn", int(ch * m)
      index += 1
    if level != len(mult) - 1:
      kind = "res_down" if model_config.resblock_updown else "down"
      yield f"input_blocks.{index}.0", f"down_{level}_resample", kind, int(ch * m)
      index, size = index + 1, size // 2
  top = int(ch * mult[-1])
  yield "middle_block.0", "mid_0", "res", top
  yield "middle_block.1", "mid_attn", "attn", top
  yield "middle_block.2", "mid_1", "res", top


def _decoder_blocks(model_config, image_size: int) -> Iterator[tuple[str, str, str, int]]:
  """UNetModel's output blocks: kinds "res" | "attn_up" | "up" | "res_up"."""
  ch, mult = model_config.ch, model_config.ch_mult
  attn, blocks = model_config.attn_resolutions, model_config.num_res_blocks
  index, size = 0, image_size // 2 ** (len(mult) - 1)
  for level, m in reversed(list(enumerate(mult))):
    for i in range(blocks + 1):
      yield f"output_blocks.{index}.0", f"up_{level}_{i}", "res", int(ch * m)
      part = 1
      if size in attn:
        yield f"output_blocks.{index}.1", f"up_{level}_{i}_attn", "attn_up", int(ch * m)
        part = 2
      if level and i == blocks:
        kind = "res_up" if model_config.resblock_updown else "up"
        yield f"output_blocks.{index}.{part}", f"up_{level}_resample", kind, int(ch * m)
        size *= 2
      index += 1


def _block_params(reader: _Reader, model_config, blocks, legacy: bool) -> Params:
  params = {}
  for prefix, name, kind, channels in blocks:
    if kind in ("res", "res_down", "res_up"):
      params[name] = reader.res_block(prefix)
    elif kind in ("attn", "attn_up"):
      heads = _heads(model_config, channels, kind == "attn_up")
      params[name] = reader.attention(prefix, heads, legacy)
    elif kind == "down":
      params[name] = {"Conv_0": reader.conv(f"{prefix}.op")}
    else:
      params[name] = {"Conv_0": reader.conv(f"{prefix}.conv")}
  return params


def _unet_params(reader: _Reader, model_config, image_size: int, legacy: bool) -> Params:
  params = {
    "conv_in": reader.conv("input_blocks.0.0"),
    "embedding": {
      "Dense_0": reader.dense("time_embed.0"),
      "Dense_1": reader.dense("time_embed.2"),
    },
    "norm_out": reader.norm("out.0"),
    "conv_out": reader.conv("out.2"),
  }
  if model_config.num_classes:
    params["embedding"]["class_embedding"] = {"embedding": reader.take("label_emb.weight")}
  blocks = [*_encoder_blocks(model_config, image_size), *_decoder_blocks(model_config, image_size)]
  return {**params, **_block_params(reader, model_config, blocks, legacy)}


def _check_fits(reader: _Reader, params: Params, model, inputs, what: str) -> Params:
  """One error naming the missing and unexpected keys and the shapes that differ, or the params."""
  unexpected = sorted(set(reader.state_dict) - reader.used)
  expected = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  mismatched = []
  if not reader.missing:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
      key = jax.tree_util.keystr(path)
      got = flat.get(key)
      if got is None or got.shape != leaf.shape:
        mismatched.append(
          f"{key}: checkpoint {None if got is None else got.shape}, model {leaf.shape}"
        )
  if reader.missing or unexpected or mismatched:
    lines = [f"The state dict does not fit {what}:"]
    if reader.missing:
      lines.append(f"  missing keys ({len(reader.missing)}): {', '.join(reader.missing[:20])}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if mismatched:
      lines.append(f"  shapes that differ ({len(mismatched)}): " + "; ".join(mismatched[:20]))
    lines.append("Check the model flags (or --preset) against the checkpoint's.")
    raise ValueError("\n".join(lines))
  return {"params": params}


def from_guided_diffusion(state_dict_or_path, **create_model_kwargs):
  """openai/guided-diffusion's UNetModel weights -> (model_config, params).

  `create_model_kwargs`: `script_util.create_model`'s (image_size, num_channels, num_res_blocks,
  channel_mult, learn_sigma, class_cond, attention_resolutions, num_heads, num_head_channels,
  num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown, use_fp16,
  use_new_attention_order, use_checkpoint)."""
  return _unet_from_guided_diffusion(state_dict_or_path, create_model_kwargs, 3, "UNetModel")


# sr_create_model's channel_mult for each large_size
SUPER_RES_CHANNEL_MULT = {512: "1,1,2,2,4,4", 256: "1,1,2,2,4,4", 64: "1,2,3,4"}


def from_guided_diffusion_super_res(state_dict_or_path, **sr_create_model_kwargs):
  """guided-diffusion's upsamplers (SuperResModel) -> (model_config, params) of the U-Net on
  `super_res.model_input(x_t, low_res)`, the 2C channels SuperResModel concatenates: the
  super_res family's model (config.super_res.low_res_size = small_size).

  `sr_create_model_kwargs`: `script_util.sr_create_model`'s (large_size, small_size,
  num_channels, num_res_blocks, learn_sigma, class_cond, attention_resolutions, num_heads,
  num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown,
  use_fp16, use_checkpoint), and `channel_mult` for a large_size it has none for."""
  kwargs = dict(sr_create_model_kwargs)
  large_size = kwargs.pop("large_size")
  kwargs.pop("small_size", None)
  kwargs.setdefault("channel_mult", SUPER_RES_CHANNEL_MULT.get(large_size, ""))
  return _unet_from_guided_diffusion(
    state_dict_or_path, {"image_size": large_size, **kwargs}, 6, "SuperResModel"
  )


def _unet_from_guided_diffusion(state_dict_or_path, create_model_kwargs, in_channels: int, what):
  from ddpm_jax import models

  model_config = guided_diffusion_model_config(**create_model_kwargs)
  reader = _Reader(load_state_dict(state_dict_or_path))
  image_size = create_model_kwargs["image_size"]
  legacy = not create_model_kwargs.get("use_new_attention_order", False)
  params = _unet_params(reader, model_config, image_size, legacy)
  model = models.get_model(model_config)
  inputs = (
    np.zeros((1, image_size, image_size, in_channels), np.float32),
    np.zeros((1,), np.int32),
  )
  return model_config, _check_fits(reader, params, model, inputs, f"{what}({create_model_kwargs})")


def guided_diffusion_classifier_config(
  image_size: int,
  classifier_width: int = 128,
  classifier_depth: int = 2,
  classifier_attention_resolutions: str = "32,16,8",
  classifier_use_scale_shift_norm: bool = True,
  classifier_resblock_updown: bool = True,
  classifier_pool: str = "attention",
  classifier_use_fp16: bool = False,
) -> ml_collections.ConfigDict:
  """create_classifier's arguments (its defaults) -> `config.model` of the same EncoderUNetModel."""
  del classifier_use_fp16  # the weights are read as float32
  if classifier_pool != "attention":
    raise ValueError(f"classifier_pool={classifier_pool!r}: only 'attention' is supported.")
  if image_size not in DEFAULT_CHANNEL_MULT:
    raise ValueError(f"create_classifier has no channel_mult for image_size={image_size}.")
  return ml_collections.ConfigDict(
    dict(
      name="classifier",
      ch=classifier_width,
      ch_mult=DEFAULT_CHANNEL_MULT[image_size],
      num_res_blocks=classifier_depth,
      attn_resolutions=tuple(int(r) for r in _parse_ints(classifier_attention_resolutions)),
      num_heads=1,
      num_head_channels=64,
      scale_shift_norm=classifier_use_scale_shift_norm,
      resblock_updown=classifier_resblock_updown,
      num_classes=NUM_CLASSES,
      embedding_type="adm_positional",
      dtype="float32",
    )
  )


def from_guided_diffusion_classifier(state_dict_or_path, **create_classifier_kwargs):
  """guided-diffusion's noisy classifier (EncoderUNetModel with attention pooling) -> (model_config,
  params) of `models.NoisyClassifier`: `apply(params, x_t, t)` = its logits. Kwargs:
  `script_util.create_classifier`'s (image_size, classifier_width, classifier_depth,
  classifier_attention_resolutions, classifier_use_scale_shift_norm, classifier_resblock_updown,
  classifier_pool, classifier_use_fp16)."""
  from ddpm_jax import models

  image_size = create_classifier_kwargs["image_size"]
  model_config = guided_diffusion_classifier_config(**create_classifier_kwargs)
  reader = _Reader(load_state_dict(state_dict_or_path))
  positions = reader.take("out.2.positional_embedding")
  params = {
    "conv_in": reader.conv("input_blocks.0.0"),
    "TimeClassEmbedding_0": {
      "Dense_0": reader.dense("time_embed.0"),
      "Dense_1": reader.dense("time_embed.2"),
    },
    "GroupNorm_0": reader.norm("out.0"),
    "AttentionPool_0": {  # CLIP's pooling: q, k, v in QKVAttention's (new) order
      "positional_embedding": None if positions is None else positions.T,
      "qkv": reader.dense("out.2.qkv_proj"),
      "out": reader.dense("out.2.c_proj"),
    },
    # its AttentionBlocks keep the legacy order (create_classifier does not pass the flag)
    **_block_params(reader, model_config, _encoder_blocks(model_config, image_size), True),
  }
  model = models.get_model(model_config)
  inputs = (np.zeros((1, image_size, image_size, 3), np.float32), np.zeros((1,), np.int32))
  return model_config, _check_fits(
    reader, params, model, inputs, f"EncoderUNetModel({create_classifier_kwargs})"
  )


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


def _diffusers_params(reader: _Reader, model_config, num_levels: int) -> Params:
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
  import os

  safetensors_path = os.path.join(model_dir, "diffusion_pytorch_model.safetensors")
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file

    return load_state_dict(load_file(safetensors_path))
  bin_path = os.path.join(model_dir, "diffusion_pytorch_model.bin")
  if os.path.exists(bin_path):
    return load_state_dict(bin_path)
  raise FileNotFoundError(
    f"No diffusion_pytorch_model.safetensors or .bin in {model_dir} (a UNet2DModel directory "
    "written by save_pretrained; for a pipeline, its unet/ sub-folder)."
  )


def from_diffusers(model_dir: str):
  """A diffusers `UNet2DModel` saved by `save_pretrained` (config.json + safetensors or .bin) ->
  (model_config, params): the DDPM checkpoints' conventions (downsample_padding=0 as TF's
  asymmetric padding, norm_eps 1e-6, the time embedding's flip_sin_to_cos / freq_shift)."""
  import json
  import os

  from ddpm_jax import models

  with open(os.path.join(model_dir, "config.json")) as f:
    unet_config = json.load(f)
  model_config = diffusers_model_config(unet_config)
  reader = _Reader(load_diffusers_weights(model_dir))
  params = _diffusers_params(reader, model_config, len(model_config.ch_mult))
  size, channels = unet_config["sample_size"], unet_config["in_channels"]
  inputs = (np.zeros((1, size, size, channels), np.float32), np.zeros((1,), np.int32))
  return model_config, _check_fits(
    reader, params, models.get_model(model_config), inputs, f"UNet2DModel in {model_dir}"
  )


# The released models' flags, from the references' READMEs (so that nobody retypes them):
# name -> (source, MODEL_FLAGS, config.data.dataset).
_ADM_256 = (
  "--attention_resolutions 32,16,8 --diffusion_steps 1000 --image_size 256 --learn_sigma True "
  "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
  "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
PRESETS = {
  "adm_imagenet64": (
    "guided_diffusion",
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
    "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "imagenet2012",
  ),
  "adm_imagenet128": (
    "guided_diffusion",
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "imagenet2012",
  ),
  "adm_imagenet256": ("guided_diffusion", _ADM_256 + " --class_cond True", "imagenet2012"),
  "adm_imagenet256_uncond": ("guided_diffusion", _ADM_256 + " --class_cond False", "imagenet2012"),
  "adm_imagenet512": (
    "guided_diffusion",
    _ADM_256.replace("--image_size 256", "--image_size 512").replace(
      "True --use_scale", "False --use_scale"
    )
    + " --class_cond True",
    "imagenet2012",
  ),
  "adm_lsun_bedroom": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/bedroom"),
  "adm_lsun_cat": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/cat"),
  "adm_lsun_horse": ("guided_diffusion", _ADM_256 + " --dropout 0.1", "lsun/horse"),
  "adm_lsun_horse_nodropout": ("guided_diffusion", _ADM_256 + " --dropout 0.0", "lsun/horse"),
}
# guided-diffusion's upsamplers (its README's "Upsampling"); with guidance and the base models they
# reach FID 3.94 (ImageNet 256×256) and 3.85 (512×512), its README's table
SUPER_RES_PRESETS = {
  "adm_imagenet64_256_upsampler": (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
    "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
  ),
  "adm_imagenet128_512_upsampler": (
    "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 "
    "--small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
    "--use_scale_shift_norm True"
  ),
}
# guided-diffusion's diffusion flags (the rest are create_model's)
_DIFFUSION_FLAGS = (
  "diffusion_steps",
  "noise_schedule",
  "timestep_respacing",
  "use_kl",
  "predict_xstart",
  "rescale_timesteps",
  "rescale_learned_sigmas",
)


def parse_model_flags(text: str) -> dict[str, Any]:
  """guided-diffusion's MODEL_FLAGS ("--image_size 64 --class_cond True …") -> a dict of values."""
  words, flags = text.split(), {}
  if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
    raise ValueError(f"MODEL_FLAGS must be '--name value' pairs; got {text!r}.")
  for name, value in zip(words[::2], words[1::2]):
    if value in ("True", "False"):
      flags[name[2:]] = value == "True"
    else:
      try:
        flags[name[2:]] = int(value)
      except ValueError:
        flags[name[2:]] = float(value) if value.replace(".", "", 1).isdigit() else value
  return flags


def guided_diffusion_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config (configs/default.py's) for guided-diffusion's flags: its U-Net, its diffusion
  (schedule, T, ε-prediction, learned range or fixed large variance, hybrid loss), ancestral
  sampling on 250 respaced steps as its README samples."""
  from configs import default

  flags = dict(flags)
  diffusion_flags = {k: flags.pop(k) for k in _DIFFUSION_FLAGS if k in flags}
  if diffusion_flags.get("predict_xstart") or diffusion_flags.get("use_kl"):
    raise ValueError("predict_xstart / use_kl checkpoints are not supported by the presets yet.")
  config = default.get_config()
  config.family = "gaussian"
  config.model.update(guided_diffusion_model_config(**flags))
  set_dataset(config, dataset)
  config.data.image_size, config.data.num_channels = flags["image_size"], 3
  config.data.resize = "adm"
  learned = flags.get("learn_sigma", False)
  config.diffusion.update(
    beta_schedule=diffusion_flags.get("noise_schedule", "linear"),
    num_timesteps=diffusion_flags.get("diffusion_steps", 1000),
    mean_type="eps",
    var_type="learned_range" if learned else "fixed_large",
    loss_type="hybrid" if learned else "mse",
  )
  config.training.label_dropout = 0.0
  config.sampling.sampler, config.sampling.num_steps = "ddpm", 250
  return config


def guided_diffusion_super_res_config(flags: dict[str, Any], dataset: str = "image_folder"):
  """A run config of config.family="super_res" for guided-diffusion's upsampler flags (large_size,
  small_size and the rest as `guided_diffusion_config`): ancestral sampling on 250 steps of the
  low-res images in super_res.low_res_file (its super_res_sample.py's --base_samples) or of a
  base model's workdir (super_res.low_res_workdir)."""
  flags = dict(flags)
  large_size, small_size = flags.pop("large_size"), flags.pop("small_size")
  flags.setdefault("channel_mult", SUPER_RES_CHANNEL_MULT.get(large_size, ""))
  config = guided_diffusion_config({**flags, "image_size": large_size}, dataset)
  config.family = "super_res"
  config.super_res.low_res_size = small_size
  return config


def set_dataset(config, dataset: str) -> None:
  """config.data.dataset with the splits `input_pipeline.DATASETS` gives it (CelebA-HQ: slices)."""
  from ddpm_jax import input_pipeline

  config.data.dataset = dataset
  spec = input_pipeline.dataset_spec(dataset)
  if spec is not None:
    config.data.train_split, config.data.eval_split = spec.train_split, spec.eval_split


def write_workdir(config, params: Params, workdir: str, source: str, checkpoint: str) -> None:
  """A workdir that --mode=sample / --mode=eval and `ddpm_jax.load` run on: config.json and a
  step-0 checkpoint whose params and EMA params are both the checkpoint's weights (the released
  checkpoints are the EMA ones)."""
  from etils import epath

  from ddpm_jax import checkpoint as checkpoint_lib
  from ddpm_jax import parallel
  from ddpm_jax.config_validation import validate_config
  from ddpm_jax.train_state import create_train_state

  config.convert = ml_collections.ConfigDict(
    dict(
      source=source,
      checkpoint=checkpoint,
      weights="params and ema_params are both the checkpoint's weights (its EMA parameters)",
    )
  )
  validate_config(config)
  mesh = parallel.make_mesh()
  state = create_train_state(config, jax.random.key(0), mesh)
  place = lambda tree: jax.tree_util.tree_map(
    lambda a, ref: jax.device_put(np.asarray(a, ref.dtype), ref.sharding), tree, state.params
  )
  state = state.replace(params=place(params), ema_params=place(params))
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpoint_lib.Checkpointer(workdir)
  ckpt.save(0, state, config)
  ckpt.close()


# diffusers' DDPMScheduler config -> config.diffusion
_DIFFUSERS_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_DIFFUSERS_VARIANCES = {
  "fixed_small": "fixed_small",
  "fixed_large": "fixed_large",
  "learned_range": "learned_range",
}


def diffusers_config(model_dir: str, dataset: str = "image_folder"):
  """(run config, params) of a diffusers model directory: a UNet2DModel's (config.json + weights),
  or a DDPMPipeline's (unet/ and scheduler/scheduler_config.json, whose schedule, T, prediction
  and variance type the config takes; ancestral sampling as DDPMPipeline's)."""
  import json
  import os

  from configs import default

  unet_dir = os.path.join(model_dir, "unet")
  unet_dir = unet_dir if os.path.isdir(unet_dir) else model_dir
  model_config, params = from_diffusers(unet_dir)
  config = default.get_config()
  config.family = "gaussian"
  config.model.update(model_config)
  with open(os.path.join(unet_dir, "config.json")) as f:
    unet_config = json.load(f)
  set_dataset(config, dataset)
  config.data.image_size = unet_config["sample_size"]
  config.data.num_channels = unet_config["in_channels"]
  scheduler_path = os.path.join(model_dir, "scheduler", "scheduler_config.json")
  scheduler = {}
  if os.path.exists(scheduler_path):
    with open(scheduler_path) as f:
      scheduler = json.load(f)
  schedule = scheduler.get("beta_schedule", "linear")
  problems = []
  if schedule not in _DIFFUSERS_SCHEDULES:
    problems.append(f"beta_schedule={schedule!r}")
  if schedule == "linear" and (
    scheduler.get("beta_start", 1e-4),
    scheduler.get("beta_end", 0.02),
  ) != (
    1e-4,
    0.02,
  ):
    problems.append(f"a linear schedule from {scheduler['beta_start']} to {scheduler['beta_end']}")
  for field, table, default_value in (
    ("prediction_type", _DIFFUSERS_PREDICTIONS, "epsilon"),
    ("variance_type", _DIFFUSERS_VARIANCES, "fixed_small"),
  ):
    if scheduler.get(field, default_value) not in table:
      problems.append(f"{field}={scheduler[field]!r}")
  if problems:
    raise ValueError(f"{scheduler_path}: not supported: {'; '.join(problems)}.")
  var_type = _DIFFUSERS_VARIANCES[scheduler.get("variance_type", "fixed_small")]
  config.diffusion.update(
    beta_schedule=_DIFFUSERS_SCHEDULES[schedule],
    num_timesteps=scheduler.get("num_train_timesteps", 1000),
    mean_type=_DIFFUSERS_PREDICTIONS[scheduler.get("prediction_type", "epsilon")],
    var_type=var_type,
    loss_type="hybrid" if var_type == "learned_range" else "mse",
  )
  config.sampling.sampler, config.sampling.num_steps = "ddpm", None
  config.sampling.clip_denoised = bool(scheduler.get("clip_sample", True))
  return config, params


# guided-diffusion's released noisy classifiers: name -> (CLASSIFIER_FLAGS, the diffusion's
# noise_schedule); the rest are create_classifier's defaults, as its README's commands
CLASSIFIER_PRESETS = {
  "adm_imagenet64_classifier": ("--image_size 64 --classifier_depth 4", "cosine"),
  "adm_imagenet128_classifier": ("--image_size 128", "linear"),
  "adm_imagenet256_classifier": ("--image_size 256", "linear"),
  "adm_imagenet512_classifier": ("--image_size 512", "linear"),
}


def guided_diffusion_classifier_run_config(flags: dict[str, Any], noise_schedule: str):
  """A run config of config.family="classifier" for create_classifier's flags, on the noise
  process of the diffusion model it guides (T = 1000, `noise_schedule`), so that
  sampling.classifier_workdir can point at its workdir."""
  from configs import default

  flags = dict(flags)
  schedule = flags.pop("noise_schedule", noise_schedule)
  steps = flags.pop("diffusion_steps", 1000)
  config = default.get_config()
  config.family = "classifier"
  config.model = guided_diffusion_classifier_config(**flags)
  set_dataset(config, "imagenet2012")
  config.data.image_size, config.data.num_channels, config.data.resize = (
    flags["image_size"],
    3,
    "adm",
  )
  config.diffusion.update(beta_schedule=schedule, num_timesteps=steps)
  config.sampling.num_samples, config.eval.bpd_num_batches = 0, 0
  return config


# diffusers' released DDPM pipelines -> config.data.dataset (the model flags are in config.json)
DIFFUSERS_PRESETS = {
  "ddpm_cifar10": "cifar10",  # google/ddpm-cifar10-32
  "ddpm_celebahq256": "celeb_a_hq/256",  # google/ddpm-celebahq-256
  "ddpm_lsun_church256": "lsun/church_outdoor",  # google/ddpm-church-256
  "ddpm_lsun_bedroom256": "lsun/bedroom",  # google/ddpm-bedroom-256
}


def main(argv) -> None:
  from absl import logging

  del argv
  presets = {
    "guided_diffusion": PRESETS,
    "guided_diffusion_classifier": CLASSIFIER_PRESETS,
    "guided_diffusion_super_res": SUPER_RES_PRESETS,
    "diffusers": DIFFUSERS_PRESETS,
  }[FLAGS.source]
  if FLAGS.preset and FLAGS.preset not in presets:
    raise ValueError(
      f"Unknown --preset {FLAGS.preset!r} for --source={FLAGS.source}; known: {', '.join(presets)}."
    )
  if FLAGS.source == "diffusers":
    dataset = FLAGS.dataset or DIFFUSERS_PRESETS.get(FLAGS.preset, "image_folder")
    config, params = diffusers_config(FLAGS.checkpoint, dataset)
  elif FLAGS.source == "guided_diffusion_classifier":
    if not (FLAGS.preset or FLAGS.model_flags):
      raise ValueError("Give --preset (one of: " + ", ".join(presets) + ") or --model_flags.")
    model_flags, schedule = CLASSIFIER_PRESETS.get(FLAGS.preset, (FLAGS.model_flags, "linear"))
    flags = parse_model_flags(model_flags)
    config = guided_diffusion_classifier_run_config(flags, schedule)
    create_kwargs = {
      k: v for k, v in flags.items() if k.startswith("classifier_") or k == "image_size"
    }
    _, params = from_guided_diffusion_classifier(FLAGS.checkpoint, **create_kwargs)
  elif FLAGS.source == "guided_diffusion_super_res":
    if not (FLAGS.preset or FLAGS.model_flags):
      raise ValueError("Give --preset (one of: " + ", ".join(presets) + ") or --model_flags.")
    flags = parse_model_flags(SUPER_RES_PRESETS.get(FLAGS.preset, FLAGS.model_flags))
    config = guided_diffusion_super_res_config(
      flags, FLAGS.dataset or ("imagenet2012" if FLAGS.preset else "image_folder")
    )
    create_kwargs = {k: v for k, v in flags.items() if k not in _DIFFUSION_FLAGS}
    _, params = from_guided_diffusion_super_res(FLAGS.checkpoint, **create_kwargs)
  else:
    if FLAGS.preset:
      _, model_flags, dataset = PRESETS[FLAGS.preset]
    elif FLAGS.model_flags:
      model_flags, dataset = FLAGS.model_flags, "image_folder"
    else:
      raise ValueError("Give --preset (one of: " + ", ".join(PRESETS) + ") or --model_flags.")
    flags = parse_model_flags(model_flags)
    config = guided_diffusion_config(flags, FLAGS.dataset or dataset)
    create_kwargs = {k: v for k, v in flags.items() if k not in _DIFFUSION_FLAGS}
    _, params = from_guided_diffusion(FLAGS.checkpoint, **create_kwargs)
  write_workdir(config, params, FLAGS.workdir, FLAGS.source, FLAGS.checkpoint)
  logging.info(
    "Wrote %s: its params and EMA params are the checkpoint's weights. Sample with: python -m "
    "ddpm_jax.main --mode=sample --config=workdir:%s --workdir=%s",
    FLAGS.workdir,
    FLAGS.workdir,
    FLAGS.workdir,
  )


if __name__ == "__main__":
  from absl import app, flags

  FLAGS = flags.FLAGS
  flags.DEFINE_enum(
    "source",
    "guided_diffusion",
    ["guided_diffusion", "guided_diffusion_classifier", "guided_diffusion_super_res", "diffusers"],
    "Its code: a guided-diffusion UNetModel, one of its noisy classifiers or upsamplers "
    "(SuperResModel), or a diffusers UNet.",
  )
  flags.DEFINE_string(
    "checkpoint",
    None,
    "guided_diffusion: the .pt file; diffusers: the model or pipeline directory.",
  )
  flags.DEFINE_string(
    "preset",
    None,
    "A released model: "
    + ", ".join([*PRESETS, *CLASSIFIER_PRESETS, *SUPER_RES_PRESETS, *DIFFUSERS_PRESETS]),
  )
  flags.DEFINE_string("model_flags", None, "Or its MODEL_FLAGS, as the reference's README.")
  flags.DEFINE_string("dataset", None, "config.data.dataset of the workdir (default: preset's).")
  flags.DEFINE_string("workdir", None, "Where the workdir goes.")
  flags.mark_flags_as_required(["checkpoint", "workdir"])
  app.run(main)
