"""Diffusion Transformers -> `models.DiT`'s parameter tree, 1:1 and with numpy only (fit.py checks
it against the model: `convert.from_dit`, `convert.from_diffusers`):

- facebookresearch/DiT's state dicts (DiT-XL-2-256x256.pt, …, or a training checkpoint's "ema"):
  its `models.py` names; the sizes are read from the weights, the heads from the width (Table 4);
- diffusers' `DiTTransformer2DModel` directories (config.json + safetensors or .bin). diffusers
  keeps a copy of the time and class embedder in every block (`norm1.emb`); the copies are equal
  in converted checkpoints, so the first is read and a directory whose copies differ is refused.
  Its embedder's sinusoid differs from the original's (`flipped_positional`: frequencies over
  half - 1) and its MLP's LayerNorm takes config.norm_eps (1e-5 by default, the original 1e-6): the
  model config carries both, so the converted network computes what diffusers' does.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from ddpm_jax.convert.diffusers import load_diffusers_weights
from ddpm_jax.convert.torch_layout import MappedWeights, Params, Reader, load_state_dict

# the widths of models.dit.DIT_SIZES (Table 4; a test pins the two tables together): a width names
# its size, and so its heads, which the weights do not show
DIT_SIZE_NAMES = {384: "S", 768: "B", 1024: "L", 1152: "XL"}


def dit_model_config(
  depth: int,
  hidden_size: int,
  num_heads: int | None,
  patch_size: int,
  out_channels: int,
  num_classes: int,
  **options,
) -> ml_collections.ConfigDict:
  """`config.model` of a DiT of these dimensions (`dit_size` named where the width is Table 4's;
  num_heads None: that size's)."""
  defaults = dict(mlp_norm_eps=1e-6, embedding_type="adm_positional")  # the original DiT's
  return ml_collections.ConfigDict(
    dict(
      name="dit",
      dit_size=DIT_SIZE_NAMES.get(hidden_size, "S"),
      patch_size=patch_size,
      out_channels=out_channels,
      num_classes=num_classes,
      null_class=True,
      depth=depth,
      hidden_size=hidden_size,
      num_heads=num_heads,
      mlp_ratio=4.0,
      dtype="float32",
      remat=False,
      **{**defaults, **options},
    )
  )


def _blocks(reader: Reader, depth: int, prefix: str, names: dict[str, str], qkv) -> Params:
  """Each block's modulation, attention and MLP layers from the torch names `names` under
  `prefix`.{i} (`qkv(i)`: the block's fused [D, 3D] projection)."""
  return {
    f"block_{i}": {
      **{name: reader.dense(f"{prefix}.{i}.{torch_name}") for name, torch_name in names.items()},
      "qkv": qkv(i),
    }
    for i in range(depth)
  }


def dit_weights(state_dict_or_path, num_heads: int | None = None) -> MappedWeights:
  """facebookresearch/DiT's weights (a state dict, a training checkpoint's dict with "ema", or a
  .pt path) on `models.DiT` (`fit.from_dit`); `num_heads` for a width not in Table 4."""
  if isinstance(state_dict_or_path, dict) and "ema" in state_dict_or_path:
    state_dict_or_path = state_dict_or_path["ema"]  # as DiT's sample.py reads its checkpoints
  reader = Reader(load_state_dict(state_dict_or_path))
  state_dict = reader.state_dict
  lacking = [key for key in ("x_embedder.proj.weight", "pos_embed") if key not in state_dict]
  if lacking:
    raise ValueError(f"Not a DiT state dict: it has no {' and no '.join(lacking)}.")
  hidden, in_channels, p, _ = state_dict["x_embedder.proj.weight"].shape
  depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
  out_channels = state_dict["final_layer.linear.weight"].shape[0] // (p * p)
  rows = len(state_dict.get("y_embedder.embedding_table.weight", ()))
  # the fixed sin-cos positions (a frozen parameter there, computed here): their count is the grid
  grid = int(round(np.sqrt(reader.take("pos_embed").shape[1])))
  if num_heads is None and hidden not in DIT_SIZE_NAMES:
    raise ValueError(f"A DiT of width {hidden} is none of Table 4's sizes: pass num_heads.")
  model_config = dit_model_config(depth, hidden, num_heads, p, out_channels, max(rows - 1, 0))
  names = {"modulation": "adaLN_modulation.1", "attn_out": "attn.proj"}
  names |= {"mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
  params = {
    "patch_embed": reader.conv("x_embedder.proj"),
    "time_embed_0": reader.dense("t_embedder.mlp.0"),
    "time_embed_1": reader.dense("t_embedder.mlp.2"),
    "final_modulation": reader.dense("final_layer.adaLN_modulation.1"),
    "final": reader.dense("final_layer.linear"),
    **_blocks(reader, depth, "blocks", names, lambda i: reader.dense(f"blocks.{i}.attn.qkv")),
  }
  if rows:
    params["class_embedding"] = {"embedding": reader.take("y_embedder.embedding_table.weight")}
  what = f"DiT(depth={depth}, hidden_size={hidden}, patch_size={p}, num_classes={rows - 1})"
  return MappedWeights(model_config, params, reader, (grid * p, grid * p, in_channels), what)


def _shared_embedder(reader: Reader, depth: int) -> Params:
  """Block 0's time and class embedder; every other block's copy taken and compared with it."""
  embedder = "transformer_blocks.{}.norm1.emb."
  keys = [
    key[len(embedder.format(0)) :]
    for key in reader.state_dict
    if key.startswith(embedder.format(0))
  ]
  differing = [
    f"{embedder.format(i)}{key}"
    for i in range(1, depth)
    for key in keys
    if not np.array_equal(
      reader.take(embedder.format(i) + key), reader.state_dict[embedder.format(0) + key]
    )
  ]
  if differing:
    raise ValueError(
      f"The blocks' copies of the shared time/class embedder differ ({len(differing)} tensors, "
      f"e.g. {differing[0]}): this converter keeps one embedder, as DiT has."
    )
  first = embedder.format(0)
  params = {
    "time_embed_0": reader.dense(f"{first}timestep_embedder.linear_1"),
    "time_embed_1": reader.dense(f"{first}timestep_embedder.linear_2"),
  }
  if f"{first}class_embedder.embedding_table.weight" in reader.state_dict:
    table = reader.take(f"{first}class_embedder.embedding_table.weight")
    params["class_embedding"] = {"embedding": table}
  return params


# DiTTransformer2DModel's config fields this converter reads as DiT has them
_DIFFUSERS_DIT_FIXED = {
  "activation_fn": "gelu-approximate",
  "norm_type": "ada_norm_zero",
  "norm_elementwise_affine": False,
  "attention_bias": True,
  "upcast_attention": False,
}


def diffusers_dit_model_config(dit_config: dict) -> ml_collections.ConfigDict:
  """A DiTTransformer2DModel's config.json -> `config.model` of the same network."""
  problems = [
    f"{field}={dit_config[field]!r} (supported: {wanted!r})"
    for field, wanted in _DIFFUSERS_DIT_FIXED.items()
    if dit_config.get(field, wanted) != wanted
  ]
  if problems:
    raise ValueError(
      "This DiTTransformer2DModel has options the converter does not support: "
      + "; ".join(problems)
      + "."
    )
  heads, head_dim = (
    dit_config.get("num_attention_heads", 16),
    dit_config.get("attention_head_dim", 72),
  )
  in_channels = dit_config.get("in_channels", 4)
  return dit_model_config(
    dit_config.get("num_layers", 28),
    heads * head_dim,
    heads,
    dit_config.get("patch_size", 2),
    dit_config.get("out_channels") or in_channels,
    dit_config.get("num_embeds_ada_norm") or 0,
    mlp_norm_eps=dit_config.get("norm_eps", 1e-5),
    embedding_type="flipped_positional",
  )


def diffusers_dit_weights(model_dir: str) -> MappedWeights:
  """A `DiTTransformer2DModel` directory's weights on `models.DiT` (`fit.from_diffusers`)."""
  with open(os.path.join(model_dir, "config.json")) as f:
    dit_config = json.load(f)
  model_config = diffusers_dit_model_config(dit_config)
  reader = Reader(load_diffusers_weights(model_dir))
  depth = model_config.depth

  def qkv(i: int) -> Params | None:  # to_q, to_k, to_v -> one [D, 3D] projection, q|k|v
    parts = [reader.dense(f"transformer_blocks.{i}.attn1.to_{name}") for name in "qkv"]
    if any(part is None for part in parts):
      return None
    return {key: np.concatenate([part[key] for part in parts], axis=-1) for key in parts[0]}

  names = {"modulation": "norm1.linear", "attn_out": "attn1.to_out.0"}
  names |= {"mlp_in": "ff.net.0.proj", "mlp_out": "ff.net.2"}
  params = {
    "patch_embed": reader.conv("pos_embed.proj"),
    "final_modulation": reader.dense("proj_out_1"),
    "final": reader.dense("proj_out_2"),
    **_shared_embedder(reader, depth),
    **_blocks(reader, depth, "transformer_blocks", names, qkv),
  }
  size, channels = dit_config.get("sample_size", 32), dit_config.get("in_channels", 4)
  what = f"DiTTransformer2DModel in {model_dir}"
  return MappedWeights(model_config, params, reader, (size, size, channels), what)
