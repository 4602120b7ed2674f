"""openai/guided-diffusion's (and improved-diffusion's) UNetModel, SuperResModel and noisy
classifier (EncoderUNetModel) weights -> this project's models' parameter trees, 1:1 and with numpy
only (fit.py checks them against the model: `convert.from_guided_diffusion`, …).

`create_model_kwargs` are guided-diffusion's `script_util.create_model` arguments (the flags its
README gives for each released model).
"""

from __future__ import annotations

from typing import Iterator

from absl import logging
import ml_collections

from ddpm_jax.convert.torch_layout import MappedWeights, Params, Reader, load_state_dict

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


# The defaults dicts its scripts parse the command line's flags onto (add_dict_to_argparser: each
# flag of its default's type): script_util.model_and_diffusion_defaults(),
# classifier_and_diffusion_defaults(), sr_model_and_diffusion_defaults(); tests compare them
# with the reference's.
DIFFUSION_DEFAULTS = dict(
  learn_sigma=False,
  diffusion_steps=1000,
  noise_schedule="linear",
  timestep_respacing="",
  use_kl=False,
  predict_xstart=False,
  rescale_timesteps=False,
  rescale_learned_sigmas=False,
)
MODEL_AND_DIFFUSION_DEFAULTS = dict(
  image_size=64,
  num_channels=128,
  num_res_blocks=2,
  num_heads=4,
  num_heads_upsample=-1,
  num_head_channels=-1,
  attention_resolutions="16,8",
  channel_mult="",
  dropout=0.0,
  class_cond=False,
  use_checkpoint=False,
  use_scale_shift_norm=True,
  resblock_updown=False,
  use_fp16=False,
  use_new_attention_order=False,
  **DIFFUSION_DEFAULTS,
)
CLASSIFIER_AND_DIFFUSION_DEFAULTS = dict(
  image_size=64,
  classifier_use_fp16=False,
  classifier_width=128,
  classifier_depth=2,
  classifier_attention_resolutions="32,16,8",
  classifier_use_scale_shift_norm=True,
  classifier_resblock_updown=True,
  classifier_pool="attention",
  **DIFFUSION_DEFAULTS,
)
SR_MODEL_AND_DIFFUSION_DEFAULTS = {
  **{
    k: v
    for k, v in MODEL_AND_DIFFUSION_DEFAULTS.items()
    if k not in ("image_size", "channel_mult", "use_new_attention_order")
  },
  "large_size": 256,
  "small_size": 64,
}
# openai/improved-diffusion's script_util.model_and_diffusion_defaults(): its create_model has no
# channel_mult (IMPROVED_DIFFUSION_CHANNEL_MULT), head width, BigGAN up/down-sampling or new
# attention order; sigma_small, and t rescaled to [0, 1000) by default.
IMPROVED_DIFFUSION_DEFAULTS = dict(
  image_size=64,
  num_channels=128,
  num_res_blocks=2,
  num_heads=4,
  num_heads_upsample=-1,
  attention_resolutions="16,8",
  dropout=0.0,
  learn_sigma=False,
  sigma_small=False,
  class_cond=False,
  diffusion_steps=1000,
  noise_schedule="linear",
  timestep_respacing="",
  use_kl=False,
  predict_xstart=False,
  rescale_timesteps=True,
  rescale_learned_sigmas=True,
  use_checkpoint=False,
  use_scale_shift_norm=True,
)
IMPROVED_DIFFUSION_CHANNEL_MULT = {256: "1,1,2,2,4,4", 64: "1,2,3,4", 32: "1,2,2,2"}


# create_model's channel_mult for channel_mult=""
DEFAULT_CHANNEL_MULT = {
  512: (0.5, 1, 1, 2, 2, 4, 4),
  256: (1, 1, 2, 2, 4, 4),
  128: (1, 1, 2, 3, 4),
  64: (1, 2, 3, 4),
}


NUM_CLASSES = 1000  # guided_diffusion.script_util.NUM_CLASSES


def _parse_ints(value) -> tuple:
  """A flag's list of numbers: "1,2,3" (guided-diffusion's form), a single number (a MODEL_FLAGS
  value such as `--attention_resolutions 16` parses as one) or a sequence."""
  if isinstance(value, str):
    return tuple(float(v) if "." in v else int(v) for v in value.split(",") if v)
  if isinstance(value, (int, float)):
    return (value,)
  return tuple(value)


def attention_resolutions(value, image_size: int, num_levels: int) -> tuple[int, ...]:
  """The resolutions of guided-diffusion's attention_resolutions that its network has: it keeps
  ds = image_size // r and attends where a level's downsampling factor 2^level equals one, so a
  resolution of no level is ignored (with a warning here, as the reference ignores it silently)."""
  given = [int(r) for r in _parse_ints(value)]
  levels = {2**level for level in range(num_levels)}
  absent = [r for r in given if image_size // r not in levels]
  if absent:
    logging.warning(
      "attention_resolutions=%s: no level of this %d×%d network has resolution %s; ignored, as "
      "guided-diffusion ignores it.",
      value,
      image_size,
      image_size,
      ", ".join(map(str, absent)),
    )
  factors = {image_size // r for r in given} & levels
  return tuple(sorted((image_size // f for f in factors), reverse=True))


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
  attention = attention_resolutions(options["attention_resolutions"], size, len(mult))
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


def _heads(model_config, channels: int, upsampling: bool) -> int:

  heads = model_config.num_heads
  if upsampling and model_config.num_heads_upsample > 0:
    heads = model_config.num_heads_upsample
  # guided-diffusion's AttentionBlock: fixed channels per head when num_head_channels is set (the
  # model, built in fit.py, refuses widths these do not divide)
  num_head_channels = model_config.num_head_channels
  return channels // num_head_channels if num_head_channels > 0 else heads


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


def _block_params(reader: Reader, model_config, blocks, legacy: bool) -> Params:
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


def _unet_params(reader: Reader, model_config, image_size: int, legacy: bool) -> Params:
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


def unet_weights(state_dict_or_path, **create_model_kwargs) -> MappedWeights:
  """UNetModel's weights (`fit.from_guided_diffusion`'s arguments) on this project's U-Net."""
  return _unet_weights(state_dict_or_path, create_model_kwargs, 3, "UNetModel")


# sr_create_model's channel_mult for each large_size
SUPER_RES_CHANNEL_MULT = {512: "1,1,2,2,4,4", 256: "1,1,2,2,4,4", 64: "1,2,3,4"}


def super_res_weights(state_dict_or_path, **sr_create_model_kwargs) -> MappedWeights:
  """SuperResModel's weights (`fit.from_guided_diffusion_super_res`'s arguments) on the U-Net of
  2C input channels."""
  kwargs = dict(sr_create_model_kwargs)
  large_size = kwargs.pop("large_size")
  kwargs.pop("small_size", None)
  kwargs.setdefault("channel_mult", SUPER_RES_CHANNEL_MULT.get(large_size, ""))
  return _unet_weights(state_dict_or_path, {"image_size": large_size, **kwargs}, 6, "SuperResModel")


def _unet_weights(state_dict_or_path, create_model_kwargs, in_channels: int, what):

  model_config = guided_diffusion_model_config(**create_model_kwargs)
  reader = Reader(load_state_dict(state_dict_or_path))
  image_size = create_model_kwargs["image_size"]
  legacy = not create_model_kwargs.get("use_new_attention_order", False)
  params = _unet_params(reader, model_config, image_size, legacy)
  return MappedWeights(
    model_config,
    params,
    reader,
    (image_size, image_size, in_channels),
    f"{what}({create_model_kwargs})",
  )


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
      attn_resolutions=attention_resolutions(
        classifier_attention_resolutions, image_size, len(DEFAULT_CHANNEL_MULT[image_size])
      ),
      num_heads=1,
      num_head_channels=64,
      scale_shift_norm=classifier_use_scale_shift_norm,
      resblock_updown=classifier_resblock_updown,
      num_classes=NUM_CLASSES,
      embedding_type="adm_positional",
      dtype="float32",
    )
  )


def classifier_weights(state_dict_or_path, **create_classifier_kwargs) -> MappedWeights:
  """EncoderUNetModel's weights (`fit.from_guided_diffusion_classifier`'s arguments) on
  `models.NoisyClassifier`."""

  image_size = create_classifier_kwargs["image_size"]
  model_config = guided_diffusion_classifier_config(**create_classifier_kwargs)
  reader = Reader(load_state_dict(state_dict_or_path))
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
  return MappedWeights(
    model_config,
    params,
    reader,
    (image_size, image_size, 3),
    f"EncoderUNetModel({create_classifier_kwargs})",
  )
