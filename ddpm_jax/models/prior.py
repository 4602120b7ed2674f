"""unCLIP's diffusion prior network (Ramesh et al. 2022, §2.2): a decoder-only Transformer over
the sequence [condition tokens, t, noised embedding x_t, a learned query], causally masked, whose
output at the query is the prediction of config.diffusion.mean_type (unCLIP: the clean embedding
x0)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models import layers

Array = jax.Array


class PriorBlock(nn.Module):
  """Pre-LayerNorm causal self-attention and MLP, each residual."""

  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, h: Array, mask: Array) -> Array:
    width = h.shape[-1]
    attended = nn.MultiHeadDotProductAttention(self.num_heads, name="attention")(
      nn.LayerNorm(name="norm_attention")(h), mask=mask
    )
    h = h + attended
    hidden = nn.gelu(
      nn.Dense(self.mlp_ratio * width, name="mlp_in")(nn.LayerNorm(name="norm_mlp")(h))
    )
    return h + nn.Dense(width, name="mlp_out")(hidden)


class PriorTransformer(nn.Module):
  """(x_t [B, D], t [B], y [B] | None, caption [B, L, Dc] | None) -> x̂0 (or ε̂) [B, D].

  The class label is one token (num_classes: the null label ∅ for classifier-free guidance; None
  gives ∅), a caption's L tokens are projected to the width (the zero caption: ∅); t is a
  sinusoidal embedding through an MLP, x_t a linear token; positions are sinusoidal."""

  embedding_dim: int
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  num_classes: int = 0
  caption_dim: int = 0

  @nn.compact
  def __call__(
    self, x_t: Array, t: Array, y: Array | None = None, caption: Array | None = None
  ) -> Array:
    batch = x_t.shape[0]
    tokens = []
    if self.num_classes:
      y = jnp.full((batch,), self.num_classes, jnp.int32) if y is None else y
      tokens.append(nn.Embed(self.num_classes + 1, self.width, name="class_embedding")(y)[:, None])
    if self.caption_dim:
      if caption is None:
        caption = jnp.zeros((batch, 1, self.caption_dim), x_t.dtype)
      tokens.append(nn.Dense(self.width, name="caption_projection")(caption))
    time = layers.EMBEDDINGS["positional"](t, self.width)
    time = nn.Dense(self.width, name="time_out")(
      nn.swish(nn.Dense(self.width, name="time_in")(time))
    )
    tokens.append(time[:, None])
    tokens.append(nn.Dense(self.width, name="input_projection")(x_t)[:, None])
    query = self.param("query", nn.initializers.normal(0.02), (self.width,))
    tokens.append(jnp.broadcast_to(query, (batch, 1, self.width)))
    h = jnp.concatenate(tokens, axis=1)
    # sinusoidal positions: a caption's length L may differ between data sets
    h = h + layers.EMBEDDINGS["positional"](jnp.arange(h.shape[1]), self.width)[None]
    mask = nn.make_causal_mask(jnp.zeros((batch, h.shape[1])))
    for i in range(self.depth):
      h = PriorBlock(self.num_heads, name=f"block_{i}")(h, mask)
    return nn.Dense(self.embedding_dim, name="output")(nn.LayerNorm(name="norm_out")(h[:, -1]))
