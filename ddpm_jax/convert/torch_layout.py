"""PyTorch state dicts read into this project's Flax parameter trees, by name.

Layouts: PyTorch convolutions [O, I, kh, kw] become HWIO kernels, linear layers and 1×1 (1-D)
convolutions [O, I] become [I, O] Dense kernels; ADM's attention keeps q, k, v as one [3C]
projection ordered (head, q|k|v, channel) in its legacy order and (q|k|v, head, channel) in the new
one, which is this project's (`layers.AttentionBlock`). A `.pt` path is read with
`torch.load(weights_only=True)`, so that a checkpoint never runs code; fp16-trained checkpoints are
read as float32.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import pickle
from typing import Any

import ml_collections
import numpy as np

Params = dict[str, Any]


def load_state_dict(state_dict_or_path) -> dict[str, np.ndarray]:
  """A state dict as float32 numpy arrays: a dict (of torch tensors or arrays) or a `.pt` path,
  read without unpickling code (`torch.load(weights_only=True)`)."""
  if isinstance(state_dict_or_path, dict):
    state_dict = state_dict_or_path
  else:
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


def conv_kernel(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]


def dense_kernel(w: np.ndarray) -> np.ndarray:
  return w.reshape(w.shape[0], w.shape[1]).T  # [O, I] or [O, I, 1] (1-D conv) -> [I, O]


def legacy_qkv(w: np.ndarray, heads: int) -> np.ndarray:
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


class Reader:
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
    return self.layer(prefix, "kernel", conv_kernel)

  def dense(self, prefix: str) -> Params | None:
    return self.layer(prefix, "kernel", dense_kernel)

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
        "kernel": legacy_qkv(qkv["kernel"].T, heads).T,
        "bias": legacy_qkv(qkv["bias"], heads),
      }
    return {
      "GroupNorm_0": self.norm(f"{prefix}.norm"),
      "qkv": qkv,
      "proj_out": self.dense(f"{prefix}.proj_out"),
    }


def _leaf_shapes(tree, prefix: str = "") -> dict[str, tuple]:
  """{"['a']['b']": shape} of a nested mapping's leaves (arrays or shape structs; None skipped)."""
  if isinstance(tree, Mapping):
    shapes = {}
    for key, subtree in tree.items():
      shapes.update(_leaf_shapes(subtree, f"{prefix}[{key!r}]"))
    return shapes
  return {} if tree is None else {prefix: np.shape(tree)}


def shape_mismatches(params, expected) -> list[tuple[str, tuple | None, tuple | None]]:
  """(key, its shape in `params`, in `expected`) of every leaf whose shapes differ or that one of
  the two trees lacks (None), sorted by key."""
  given, wanted = _leaf_shapes(params), _leaf_shapes(expected)
  keys = sorted(given.keys() | wanted.keys())
  return [(k, given.get(k), wanted.get(k)) for k in keys if given.get(k) != wanted.get(k)]


@dataclasses.dataclass(frozen=True)
class MappedWeights:
  """A checkpoint read onto one of this project's models, before the model checks it (fit.py):
  `params` is the Flax "params" tree, `reader` what was taken from the state dict, `input_shape`
  one example's [H, W, C] (the model's init input), `what` names the source in errors and
  `takes_time` whether the model's init also takes a noise level (not an autoencoder's)."""

  model_config: ml_collections.ConfigDict
  params: Params
  reader: Reader
  input_shape: tuple[int, ...]
  what: str
  takes_time: bool = True
