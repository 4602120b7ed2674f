"""The U-Net of DDPM (Ho et al. 2020, App. B) with the options of ADM (Dhariwal & Nichol 2021, §3).

DDPM: `UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)`.
ADM adds: more residual blocks, BigGAN up/down-sampling (`resblock_updown`), multi-head attention at
several resolutions (`num_heads` or `num_head_channels`), AdaGN (`scale_shift_norm`), class
conditioning with an extra null class for classifier-free guidance (`num_classes`), and learned
variances (`out_channels` = 2·C). score_sde's DDPM++ / NCSN++ (Song et al. 2021, App. H; its
ncsnpp.py) add: residual sums rescaled by 1/√2 (`skip_rescale`), FIR resampling with (1, 3, 3, 1)
(`fir_kernel`), the input image fed to every down level (`progressive_input="input_skip"`) and the
output summed from every up level (`progressive="output_skip"`), and ncsnpp.py's block layout
(`ncsnpp_layout`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models import layers

Array = jax.Array

PROGRESSIVE_INPUTS = ("none", "input_skip")
PROGRESSIVE_OUTPUTS = ("none", "output_skip")


class TimeClassEmbedding(nn.Module):
  """t (and y) -> [B, 4·ch]: sinusoidal embedding of width ch (or NCSN++'s Gaussian Fourier
  features, ch frequencies, width 2·ch), Dense, swish, Dense; plus a learned class embedding.

  The class table has `num_classes + 1` rows: row `num_classes` is the null label ∅ used for
  unconditional predictions in classifier-free guidance, and what `y=None` means for a
  class-conditional model; without `null_class` (ADM's own models) it has `num_classes` rows and
  the model needs labels.
  """

  ch: int
  num_classes: int = 0
  embedding_type: str = "positional"
  dtype: layers.Dtype = jnp.float32
  null_class: bool = True

  @nn.compact
  def __call__(self, t: Array, y: Array | None) -> Array:
    width = 2 * self.ch if self.embedding_type == "fourier" else self.ch
    emb = layers.EMBEDDINGS[self.embedding_type](t, width)
    emb = nn.Dense(4 * self.ch, dtype=self.dtype)(emb)
    emb = nn.Dense(4 * self.ch, dtype=self.dtype)(nn.swish(emb))
    if self.num_classes:
      if y is None and not self.null_class:
        if not self.is_initializing():  # (initialising needs no labels)
          raise ValueError(
            "This class-conditional model has no null label (null_class=False): pass labels y."
          )
        y = jnp.zeros(t.shape, jnp.int32)
      elif y is None:
        y = jnp.full(t.shape, self.num_classes, jnp.int32)
      rows = self.num_classes + (1 if self.null_class else 0)
      emb = emb + nn.Embed(rows, 4 * self.ch, dtype=self.dtype, name="class_embedding")(y)
    return emb


class UNetBackbone(nn.Module):
  """Fields and the encoder half shared by `UNet` and the noisy classifier: the input convolution,
  the down-sampling path and the middle block."""

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  num_heads: int = 1
  num_head_channels: int = -1
  num_heads_upsample: int = -1  # heads of the up path's attention (ADM); -1: num_heads
  norm_eps: float = 1e-5  # every GroupNorm's ε (diffusers' DDPM checkpoints: 1e-6)
  # of the strided convolutions: "symmetric" (PyTorch's 1 | 1) or "tf" (0 | 1, diffusers'
  # downsample_padding=0 of the DDPM checkpoints converted from TensorFlow)
  downsample_padding: str = "symmetric"
  resblock_updown: bool = False
  scale_shift_norm: bool = False
  conv_resample: bool = True
  context_dim: int | None = None
  # of t: "positional" (sinusoidal) | "fourier" (NCSN++'s, for log σ)
  embedding_type: str = "positional"
  fourier_features: Sequence[
    int
  ] = ()  # VDM: append sin/cos(2^n·2π x_t) for these n to the input channels
  # "winograd": 3×3 convolutions by Winograd F(4×4|2×2, 3×3), faster on XLA:CPU
  conv_impl: str = "xla"
  dtype: layers.Dtype = jnp.float32
  remat: bool | str = False  # layers.rematerialised: False | True | "products"
  skip_rescale: bool = False  # residual sums (x + h)/√2 (DDPM++, NCSN++)
  fir_kernel: Sequence[
    int
  ] = ()  # FIR resampling filter, (1, 3, 3, 1) in NCSN++; () = nearest / 2×2 mean
  # "input_skip": the input, downsampled, added by 1×1 conv after each down level
  progressive_input: str = "none"
  # score_sde's layout: one attention block per up level after its residual blocks (not one after
  # each), and 1×1 projections of the skip path in every resampling residual block.
  ncsnpp_layout: bool = False

  # Blocks are named by their place in the U-Net ("down_1_0", "mid_attn", "up_0_2", …), so that
  # parameters are the same with and without remat.
  @nn.nowrap
  def res_block(self, channels: int, name: str, resample: str | None = None) -> nn.Module:
    # `train` is argument 3 of ResBlock.__call__ counting self: it selects dropout, so it stays
    # static.
    cls = layers.rematerialised(layers.ResBlock, self.remat, static_argnums=(3,))
    return cls(
      channels,
      self.dropout,
      self.scale_shift_norm,
      resample,
      self.conv_impl,
      dtype=self.dtype,
      fir_kernel=self.fir_kernel,
      project_resampled_skip=self.ncsnpp_layout,
      skip_rescale=self.skip_rescale,
      norm_eps=self.norm_eps,
      name=name,
    )

  @nn.nowrap
  def attention_context_dim(self) -> int | None:
    """The width of the tokens the attention blocks cross-attend to (None: none)."""
    return self.context_dim

  @nn.nowrap
  def attention(self, name: str, upsampling: bool = False) -> nn.Module:
    """The attention block; on the up path with `num_heads_upsample` heads where that is set."""
    heads = (
      self.num_heads_upsample if upsampling and self.num_heads_upsample > 0 else self.num_heads
    )
    return layers.AttentionBlock(
      heads,
      self.num_head_channels,
      self.attention_context_dim(),
      dtype=self.dtype,
      skip_rescale=self.skip_rescale,
      norm_eps=self.norm_eps,
      name=name,
    )

  @nn.nowrap
  def resample_layer(self, direction: str, name: str) -> nn.Module:
    if direction == "up":
      return layers.Upsample(
        self.conv_resample, self.conv_impl, dtype=self.dtype, fir_kernel=self.fir_kernel, name=name
      )
    return layers.Downsample(
      self.conv_resample,
      self.conv_impl,
      dtype=self.dtype,
      fir_kernel=self.fir_kernel,
      padding=self.downsample_padding,
      name=name,
    )

  @nn.nowrap
  def encode(
    self, x: Array, emb: Array, context: Array | None, train: bool
  ) -> tuple[Array, list[Array]]:
    """-> (middle-block output, skip activations of the down path in order)."""
    if self.progressive_input not in PROGRESSIVE_INPUTS:
      raise ValueError(
        f"Unknown progressive_input {self.progressive_input!r}; valid: "
        f"{', '.join(PROGRESSIVE_INPUTS)}."
      )
    input_pyramid = x
    if self.fourier_features:
      x = jnp.concatenate([x, layers.base2_fourier_features(x, self.fourier_features)], axis=-1)
    h = layers.Conv(self.ch, impl=self.conv_impl, dtype=self.dtype, name="conv_in")(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = self.res_block(int(self.ch * mult), f"down_{level}_{i}")(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = self.attention(f"down_{level}_{i}_attn")(h, context)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        name = f"down_{level}_resample"
        if self.resblock_updown:
          h = self.res_block(h.shape[-1], name, "down")(h, emb, train)
        else:
          h = self.resample_layer("down", name)(h)
        if self.progressive_input == "input_skip":  # NCSN++'s Combine(method="sum")
          input_pyramid = layers.resample(input_pyramid, "down", self.fir_kernel)
          h = h + nn.Dense(h.shape[-1], dtype=self.dtype, name=f"down_{level}_input_skip")(
            input_pyramid
          )
        skips.append(h)
    h = self.res_block(h.shape[-1], "mid_0")(h, emb, train)
    h = self.attention("mid_attn")(h, context)
    h = self.res_block(h.shape[-1], "mid_1")(h, emb, train)
    return h, skips


class UNet(UNetBackbone):
  """ε/x0/v-prediction U-Net: (x_t [B, H, W, C], t [B], y [B] | None, context [B, L, D] | None,
  train, embedding [B, embedding_dim] | None) -> [B, H, W, out]. An embedding enters the time
  embedding (every residual block) and, with `embedding_tokens`, the attention's context.

  progressive="output_skip" (NCSN++): each up level ends in GroupNorm, swish and a 3×3 convolution
  to the output channels, added to the upsampled sum of the levels below; that sum is the output.
  """

  out_channels: int = 3
  num_classes: int = 0
  null_class: bool = True  # a null label ∅ for classifier-free guidance (ADM's models: none)
  progressive: str = "none"
  # the width D of an embedding [B, D] the network is conditioned on (a representation's code, an
  # image embedding), projected and added to the time embedding (0: none; the zero embedding: ∅)
  embedding_dim: int = 0
  # unCLIP §2.1: the embedding also projected to this many extra tokens of the attention blocks'
  # context (of width context_dim, or 4·ch without contexts), appended to the contexts
  embedding_tokens: int = 0

  @nn.nowrap
  def attention_context_dim(self) -> int | None:
    if self.embedding_dim and self.embedding_tokens:
      return self.context_dim or 4 * self.ch
    return self.context_dim

  @nn.compact
  def __call__(
    self,
    x: Array,
    t: Array,
    y: Array | None = None,
    context: Array | None = None,
    train: bool = False,
    embedding: Array | None = None,
  ) -> Array:
    emb = TimeClassEmbedding(
      self.ch,
      self.num_classes,
      self.embedding_type,
      dtype=self.dtype,
      null_class=self.null_class,
      name="embedding",
    )(t, y)
    if self.embedding_dim:
      if embedding is None:  # ∅ (and what initialising needs)
        embedding = jnp.zeros((x.shape[0], self.embedding_dim), x.dtype)
      # emb += W z (+ b): the time embedding carries z into every residual block (AdaGN)
      emb = emb + nn.Dense(4 * self.ch, dtype=self.dtype, name="embedding_projection")(embedding)
      if self.embedding_tokens:
        width = self.attention_context_dim()
        tokens = nn.Dense(self.embedding_tokens * width, dtype=self.dtype, name="embedding_tokens")(
          embedding
        ).reshape(x.shape[0], self.embedding_tokens, width)
        context = tokens if context is None else jnp.concatenate([context, tokens], axis=1)
    if self.progressive not in PROGRESSIVE_OUTPUTS:
      raise ValueError(
        f"Unknown progressive {self.progressive!r}; valid: {', '.join(PROGRESSIVE_OUTPUTS)}."
      )
    h, skips = self.encode(x, emb, context, train)
    pyramid = None
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = self.res_block(int(self.ch * mult), f"up_{level}_{i}")(
          jnp.concatenate([h, skips.pop()], axis=-1), emb, train
        )
        if h.shape[1] in self.attn_resolutions and not self.ncsnpp_layout:
          h = self.attention(f"up_{level}_{i}_attn", upsampling=True)(h, context)
      if h.shape[1] in self.attn_resolutions and self.ncsnpp_layout:
        h = self.attention(f"up_{level}_attn", upsampling=True)(h, context)
      if self.progressive == "output_skip":
        out = self.output_head(h, f"up_{level}_pyramid_norm", f"up_{level}_pyramid_conv")
        pyramid = out if pyramid is None else layers.resample(pyramid, "up", self.fir_kernel) + out
      if level != 0:
        name = f"up_{level}_resample"
        if self.resblock_updown:
          h = self.res_block(h.shape[-1], name, "up")(h, emb, train)
        else:
          h = self.resample_layer("up", name)(h)
    h = (
      pyramid if self.progressive == "output_skip" else self.output_head(h, "norm_out", "conv_out")
    )
    return h.astype(jnp.float32)

  @nn.nowrap
  def output_head(self, h: Array, norm_name: str, conv_name: str) -> Array:
    """GroupNorm, swish, zero-initialised 3×3 convolution to `out_channels`."""
    h = nn.swish(layers.GroupNorm(epsilon=self.norm_eps, name=norm_name)(h)).astype(self.dtype)
    return layers.Conv(
      self.out_channels, zero_init=True, impl=self.conv_impl, dtype=self.dtype, name=conv_name
    )(h)
