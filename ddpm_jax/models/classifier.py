"""The noisy classifier of ADM (Dhariwal & Nichol 2021, §4): the U-Net's encoder half with attention
pooling, trained on x_t at random t; its ∇ log p(y | x_t) guides sampling."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models import layers
from ddpm_jax.models.unet import TimeClassEmbedding, UNetBackbone

Array = jax.Array


class AttentionPool(nn.Module):
  """CLIP/ADM attention pooling: the spatial mean token attends over itself and all positions, with
  a learned positional embedding: [B, H, W, C] -> [B, num_outputs]."""

  num_outputs: int
  num_heads: int = 1
  num_head_channels: int = -1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    tokens = x.reshape(b, hgt * wid, c)
    # [B, 1 + HW, C]
    tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
    positions = self.param(
      "positional_embedding", nn.initializers.normal(c**-0.5), (1 + hgt * wid, c)
    )
    tokens = (tokens + positions).astype(self.dtype)
    q, k, v = jnp.split(nn.Dense(3 * c, dtype=self.dtype, name="qkv")(tokens), 3, axis=-1)
    heads = layers.num_attention_heads(c, self.num_heads, self.num_head_channels)
    # only the mean token's output is used
    pooled = layers.multihead_attention(q[:, :1], k, v, heads)[:, 0]
    return nn.Dense(self.num_outputs, dtype=self.dtype, name="out")(pooled).astype(jnp.float32)


class NoisyClassifier(UNetBackbone):
  """(x_t [B, H, W, C], t [B]) -> logits [B, num_classes]."""

  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    emb = TimeClassEmbedding(self.ch, embedding_type=self.embedding_type, dtype=self.dtype)(t, None)
    h, _ = self.encode(x, emb, None, train)
    h = nn.swish(layers.GroupNorm()(h))
    return AttentionPool(
      self.num_classes, self.num_heads, self.num_head_channels, dtype=self.dtype
    )(h)
