"""U-Net and noisy classifier: shapes for every option combination, pinned paper sizes, and
behaviour."""

import collections
import functools
import importlib
import itertools
import math
import re

import flax.linen as nn
import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from ddpm_jax import models
from ddpm_jax.models import cpu_conv, layers
from ddpm_jax.models.unet import TimeClassEmbedding, UNet

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
B, S, C = 2, 8, 3


def _inputs(num_classes=0, context_dim=None):
  x = jax.random.normal(jax.random.key(0), (B, S, S, C))
  t = jnp.array([3, 700])
  y = jnp.array([1, 4]) if num_classes else None
  context = jax.random.normal(jax.random.key(1), (B, 5, context_dim)) if context_dim else None
  return x, t, y, context


def _random_params(model, *args):
  """Random parameters of the right shapes, none zero so that no layer is hidden (numpy: compiling
  the initialisers costs seconds on CPU). Kernels ~ N(0, 1/fan_in), GroupNorm scales ~ 1, biases
  small."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return 1.0 + 0.1 * rng.normal(size=leaf.shape).astype(np.float32)
    fan_in = math.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 10.0
    return (rng.normal(size=leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


OPTIONS = dict(
  resblock_updown=(False, True),
  scale_shift_norm=(False, True),
  num_classes=(0, 10),
  context_dim=(None, 16),
  num_head_channels=(-1, 16),
  remat=(False, True),
  learned_var=(False, True),
  dtype=(jnp.float32, jnp.bfloat16),
)


def _pairwise_covering_rows():
  """16 rows over 8 two-level options in which every pair of options takes all 4 value pairs: the
  first four options run through all 16 combinations, the others are parities of three of them
  (2^(8-4) design)."""
  for a, b, c, d in itertools.product((0, 1), repeat=4):
    yield (a, b, c, d, a ^ b ^ c, a ^ b ^ d, a ^ c ^ d, b ^ c ^ d)


@pytest.mark.slow
@pytest.mark.parametrize("levels", list(_pairwise_covering_rows()))
def test_unet_output_shape_and_dtype_over_option_combinations(levels):
  opts = {name: values[level] for (name, values), level in zip(OPTIONS.items(), levels)}
  out_channels = 2 * C if opts.pop("learned_var") else C
  model = UNet(**TINY, **opts, out_channels=out_channels)
  x, t, y, context = _inputs(opts["num_classes"], opts["context_dim"])
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y, context))
  out = jax.eval_shape(
    lambda v: model.apply(v, x, t, y, context, train=True, rngs={"dropout": jax.random.key(1)}),
    variables,
  )
  assert out.shape == (B, S, S, out_channels) and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))


def test_covering_rows_cover_every_pair():
  rows = list(_pairwise_covering_rows())
  for i, j in itertools.combinations(range(len(OPTIONS)), 2):
    assert {(r[i], r[j]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def _count(config_module):
  config = importlib.import_module(f"configs.{config_module}").get_config()
  model = models.get_model(config.model)
  size, channels = config.data.image_size, config.data.num_channels
  x, t = jnp.zeros((1, size, size, channels)), jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))  # no allocation
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes))


@pytest.mark.slow
def test_paper_model_sizes():
  # DDPM CIFAR-10: 35.7 M in the paper; the same count as diffusers' UNet2DModel of this
  # architecture.
  assert _count("ddpm_cifar10") == 35_746_307
  # DDPM CelebA-HQ 256: 114 M in the paper.
  assert _count("ddpm_celebahq256") == 113_673_219
  # ADM ImageNet 64: 296 M in the paper; guided-diffusion's create_model counts 295,904,454.
  assert _count("adm_imagenet64") == 295_904_454
  # Improved DDPM CIFAR-10 (3 blocks, attention at 16 and 8, AdaGN, learned Σ).
  assert _count("iddpm_cifar10") == 52_546_438
  # score_sde's DDPM++ and NCSN++ (cont.): the counts of its ncsnpp.py's modules, NCSN++'s less the
  # 128 Fourier frequencies that ncsnpp.py stores as a frozen parameter.
  assert _count("ddpmpp_cifar10_vp") == 61_804_419
  # EDM's CIFAR-10 DDPM++ (its train.py --arch=ddpmpp): the count of NVlabs/edm's SongUNet.
  assert _count("edm_cifar10_ddpmpp") == 55_732_739
  assert _count("ncsnpp_cifar10_ve") == 61_894_796


def test_timestep_embedding_formula():
  t = np.array([0, 1, 17, 999])
  dim = 10
  emb = np.asarray(layers.timestep_embedding(jnp.asarray(t), dim))
  half = dim // 2
  freqs = np.exp(-np.log(10_000) * np.arange(half) / (half - 1))
  np.testing.assert_allclose(emb[:, :half], np.sin(t[:, None] * freqs), atol=2e-4)
  np.testing.assert_allclose(emb[:, half:], np.cos(t[:, None] * freqs), atol=2e-4)
  assert layers.timestep_embedding(jnp.asarray(t), 7).shape == (4, 7)


def test_fourier_embedding_formula_and_its_frequencies_are_constants():
  log_sigma = np.log(np.array([0.01, 0.3, 50.0]))
  emb = np.asarray(layers.fourier_embedding(jnp.asarray(log_sigma), 64))
  freqs = 16.0 * np.asarray(jax.random.normal(jax.random.key(0), (32,)))
  np.testing.assert_allclose(emb[:, :32], np.sin(2 * np.pi * log_sigma[:, None] * freqs), atol=1e-3)
  np.testing.assert_allclose(emb[:, 32:], np.cos(2 * np.pi * log_sigma[:, None] * freqs), atol=1e-3)
  assert 8 < np.std(freqs) < 24  # N(0, 16²)
  # The frequencies are not parameters: NCSN++'s ch frequencies (2·ch features instead of the
  # sinusoidal embedding's ch) add only ch rows of 4·ch to the first Dense layer.
  x, t = jnp.zeros((2, 8, 8, C)), jnp.asarray(log_sigma[:2], jnp.float32)
  count = lambda m: sum(
    a.size for a in jax.tree_util.tree_leaves(jax.eval_shape(m.init, jax.random.key(0), x, t))
  )
  fourier = UNet(**TINY, out_channels=C, embedding_type="fourier")
  assert count(fourier) - count(UNet(**TINY, out_channels=C)) == 32 * 4 * 32
  assert (
    jax.eval_shape(fourier.apply, jax.eval_shape(fourier.init, jax.random.key(0), x, t), x, t).shape
    == x.shape
  )
  embed = TimeClassEmbedding(32, embedding_type="fourier")
  emb = embed.apply(embed.init(jax.random.key(0), t, None), t, None)
  assert emb.shape == (2, 128) and not np.allclose(emb[0], emb[1])


@pytest.fixture(scope="module")
def conditional_model():
  model = UNet(
    **TINY, out_channels=C, dropout=0.5, num_classes=10, context_dim=16, scale_shift_norm=True
  )
  x, t, y, context = _inputs(10, 16)
  params = jax.jit(model.init)(jax.random.key(0), x, t, y, context)
  return model, params


def test_output_is_zero_at_init(conditional_model):
  model, params = conditional_model
  x, t, y, context = _inputs(10, 16)
  np.testing.assert_array_equal(jax.jit(model.apply)(params, x, t, y, context), 0.0)


def test_dropout_only_with_train(conditional_model):
  model, _ = conditional_model
  x, t, y, context = _inputs(10, 16)
  params = _random_params(model, x, t, y, context)
  apply = jax.jit(
    lambda p, key, train: model.apply(p, x, t, y, context, train=train, rngs={"dropout": key}),
    static_argnums=2,
  )
  eval_a, eval_b = apply(params, jax.random.key(1), False), apply(params, jax.random.key(2), False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, train_b = apply(params, jax.random.key(1), True), apply(params, jax.random.key(2), True)
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
  assert float(jnp.max(jnp.abs(train_a - eval_a))) > 1e-3


def test_class_null_class_and_context_change_the_output(conditional_model):
  model, _ = conditional_model
  x, t, y, context = _inputs(10, 16)
  params = _random_params(model, x, t, y, context)
  apply = jax.jit(model.apply)
  base = apply(params, x, t, y, context)
  other_class = apply(params, x, t, y + 1, context)
  null_class = apply(params, x, t, None, context)
  explicit_null = apply(params, x, t, jnp.full_like(y, 10), context)
  other_context = apply(params, x, t, y, context + 1.0)
  for changed in (other_class, null_class, other_context):
    assert float(jnp.max(jnp.abs(changed - base))) > 1e-3
  np.testing.assert_array_equal(null_class, explicit_null)
  with pytest.raises(ValueError, match="context"):
    model.apply(params, x, t, y, None)


def test_bfloat16_matches_float32():
  kwargs = dict(
    **TINY, out_channels=C, num_head_channels=16, scale_shift_norm=True, resblock_updown=True
  )
  x, t, _, _ = _inputs()
  params = _random_params(UNet(**kwargs), x, t)
  out32 = jax.jit(UNet(**kwargs).apply)(params, x, t)
  out16 = jax.jit(UNet(**kwargs, dtype=jnp.bfloat16).apply)(params, x, t)
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert rel < 0.03, rel


@pytest.mark.slow
def test_remat_and_winograd_give_the_same_values_and_gradients():
  x, t, _, _ = _inputs()
  # 8×8: Winograd F(2×2, 3×3)
  one_level = dict(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
  params = _random_params(UNet(**one_level, out_channels=C), x, t)
  loss = lambda **kw: jax.jit(
    jax.value_and_grad(
      lambda p: jnp.sum(UNet(**one_level, out_channels=C, **kw).apply(p, x, t) ** 2)
    )
  )
  v0, g0 = loss()(params)
  # The same sums in different orders: rounding-level differences, on the scale of the largest
  # gradient.
  atol = 1e-5 * max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g0))
  for option in (dict(remat=True), dict(remat="products"), dict(conv_impl="winograd")):
    v1, g1 = loss(**option)(params)
    np.testing.assert_allclose(v0, v1, rtol=1e-5, err_msg=str(option))
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=str(option)),
      g0,
      g1,
    )


def test_remat_products_keeps_only_the_blocks_matmul_and_convolution_outputs(capsys):
  """The backward pass's saved activations (jax's own list of residuals): "products" keeps what full
  remat keeps (the blocks' inputs, the layers outside them) and the blocks' convolution and matmul
  outputs, nothing else (their norms and activations are computed again): fewer than no remat."""
  x, t, _, _ = _inputs()
  one_level = dict(ch=32, ch_mult=(1,), num_res_blocks=2, attn_resolutions=(), out_channels=C)
  params = UNet(**one_level).init(jax.random.key(0), x, t)

  def residuals(remat) -> list[str]:
    loss = lambda p: jnp.sum(UNet(**one_level, remat=remat).apply(p, x, t) ** 2)
    jax.ad_checkpoint.print_saved_residuals(loss, params)
    return [
      line for line in capsys.readouterr().out.splitlines() if "from the argument" not in line
    ]

  def elements(lines: list[str]) -> int:
    shapes = [re.match(r"\w+\[([\d,]*)\]", line).group(1) for line in lines]
    return sum(math.prod(int(n) for n in shape.split(",") if n) for shape in shapes)

  kept = {remat: residuals(remat) for remat in (False, "products", True)}
  is_product = lambda line: re.search(r"output of (conv_general_dilated|dot_general) ", line)
  products = [line for line in kept["products"] if is_product(line)]
  others = [line for line in kept["products"] if not is_product(line)]
  assert collections.Counter(others) == collections.Counter(kept[True])
  assert len(products) > sum(map(bool, map(is_product, kept[True]))) + 4  # 4 blocks' convolutions
  assert elements(kept[False]) > 1.5 * elements(kept["products"])


def test_model_remat_none_is_products_on_accelerators_only(monkeypatch):
  from configs import default

  config = default.get_config()
  assert config.model.remat is None  # the default
  assert models.get_model(config.model).remat is False  # (this CPU)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.get_model(config.model).remat == "products"
  config.model.remat = True
  assert models.get_model(config.model).remat is True
  with pytest.raises(ValueError, match="model.remat must be"):
    models.remat_setting("products")
  with pytest.raises(ValueError, match="remat must be False, True or 'products'"):
    layers.rematerialised(layers.ResBlock, "all")


def test_noisy_classifier_logits():
  model = models.NoisyClassifier(
    **TINY, num_classes=7, num_head_channels=16, scale_shift_norm=True, resblock_updown=True
  )
  x, t, _, _ = _inputs()
  params = _random_params(model, x, t)
  logits = jax.jit(model.apply)(params, x, t)
  assert logits.shape == (B, 7) and logits.dtype == jnp.float32
  # ∇x log p(y | x_t): what classifier guidance uses; finite and input-dependent.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jax.nn.log_softmax(model.apply(params, x, t))[:, 3])))(
    x
  )
  assert (
    grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
  )


def test_get_model_rejects_unknown_fields_and_names():
  from configs import default

  config = default.get_config()
  assert isinstance(models.get_model(config.model), UNet)
  bad = config.model.to_dict()
  bad["channels"] = 3
  with pytest.raises(ValueError, match=r"\['channels'\]"):
    models.get_model(bad)
  with pytest.raises(ValueError, match="Unknown model"):
    models.get_model({"name": "transformer"})
  with pytest.raises(ValueError, match="num_head_channels"):
    UNet(**TINY, num_head_channels=24).init(jax.random.key(0), *_inputs()[:2])


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 1), (1, 2, 5, 5, 2, 1)])
def test_fir_resampling_is_centred_filtering_by_the_normalised_kernel(kernel):
  x = np.random.default_rng(0).normal(size=(2, 6, 10, 3))
  k = np.asarray(kernel, np.float64) / np.sum(kernel)
  length = len(k)

  def scipy_resample(a, up):
    # scipy's full convolution of the zero-stuffed (up) signal, cropped so that every output sample
    # is centred where it belongs: output n of the 2× grid at input coordinate (n + ½)/2 - ½, output
    # i of the ½× grid at 2i + ½.
    for axis in (1, 2):
      full = np.apply_along_axis(
        lambda v: scipy.signal.upfirdn((2 if up else 1) * k, v, up=2 if up else 1), axis, a
      )
      keep = (
        np.arange(2 * a.shape[axis]) + (length - 2) // 2
        if up
        else 2 * np.arange(a.shape[axis] // 2) + length // 2
      )
      a = np.take(full, keep, axis=axis)
    return a

  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(layers.fir_upsample(xj, kernel), scipy_resample(x, up=True), atol=1e-5)
  np.testing.assert_allclose(
    layers.fir_downsample(xj, kernel), scipy_resample(x, up=False), atol=1e-5
  )
  if kernel == (1, 1):  # the box filter is nearest-neighbour upsampling and 2×2 mean pooling
    np.testing.assert_allclose(
      layers.fir_upsample(xj, kernel), layers.upsample_nearest(xj), atol=1e-6
    )
    np.testing.assert_allclose(
      layers.fir_downsample(xj, kernel), layers.downsample_avg(xj), atol=1e-6
    )
  # A constant image stays constant away from the border (zeros lie outside it).
  ones = jnp.ones((1, 16, 16, 1))
  np.testing.assert_allclose(layers.fir_upsample(ones, kernel)[0, 4:-4, 4:-4], 1.0, rtol=1e-6)
  np.testing.assert_allclose(layers.fir_downsample(ones, kernel)[0, 2:-2, 2:-2], 1.0, rtol=1e-6)


def test_skip_rescale_divides_the_residual_sum_by_sqrt_2():
  h = jax.random.normal(jax.random.key(2), (B, 4, 4, 64))
  emb = jax.random.normal(jax.random.key(3), (B, 128))
  for block, args in (
    (layers.ResBlock(64, resample="down", project_resampled_skip=True), (h, emb, False)),
    (layers.AttentionBlock(num_head_channels=16), (h,)),
  ):
    params = _random_params(block, *args)
    np.testing.assert_allclose(
      block.clone(skip_rescale=True).apply(params, *args),
      block.apply(params, *args) / math.sqrt(2),
      rtol=1e-5,
      atol=1e-5,
    )


NCSNPP = dict(
  skip_rescale=True,
  ncsnpp_layout=True,
  fir_kernel=(1, 3, 3, 1),
  progressive_input="input_skip",
  progressive="output_skip",
  embedding_type="fourier",
  resblock_updown=True,
)


@pytest.mark.parametrize(
  "options",
  [
    NCSNPP,
    dict(NCSNPP, resblock_updown=False, conv_resample=False),
    dict(NCSNPP, fir_kernel=(), remat=True, num_classes=10, conv_impl="winograd"),
  ],
)
def test_ncsnpp_options_compose(options):
  model = UNet(**TINY, out_channels=C, **options)
  x, t, _, _ = _inputs()
  out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), x, t), x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32


def test_output_skip_sums_every_up_levels_output_upsampled_to_the_image():
  model = UNet(**TINY, out_channels=C, **NCSNPP)
  x, t, _, _ = _inputs()
  params = _random_params(model, x, t)
  out, state = model.apply(
    params, x, t, capture_intermediates=lambda mdl, _: (mdl.name or "").endswith("pyramid_conv")
  )
  heads = {name: value["__call__"][0] for name, value in state["intermediates"].items()}
  assert sorted(heads) == ["up_0_pyramid_conv", "up_1_pyramid_conv"] and heads[
    "up_1_pyramid_conv"
  ].shape == (B, 4, 4, C)
  expected = (
    layers.fir_upsample(heads["up_1_pyramid_conv"], (1, 3, 3, 1)) + heads["up_0_pyramid_conv"]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The input pyramid: the input, FIR-downsampled, enters the down path through a 1×1 convolution.
  zero_input_skip = jax.tree_util.tree_map_with_path(
    lambda path, v: v * 0 if "input_skip" in jax.tree_util.keystr(path) else v, params
  )
  assert float(jnp.abs(model.apply(zero_input_skip, x, t) - out).max()) > 1e-3
  with pytest.raises(ValueError, match="fused"):
    UNet(**TINY, fir_kernel=(1, 3, 3, 1)).init(jax.random.key(0), x, t)
  with pytest.raises(ValueError, match="progressive"):
    UNet(**TINY, progressive="residual").init(jax.random.key(0), x, t)


@pytest.mark.parametrize("shape", [(2, 6, 6, 64), (2, 10, 96)])
def test_group_norm_matches_its_definition_and_flax(shape):
  # a mean to subtract
  x = jnp.asarray(3.0 + 2.0 * np.random.default_rng(0).normal(size=shape), jnp.float32)
  params = _random_params(layers.GroupNorm(), x)
  scale, bias = params["params"]["scale"], params["params"]["bias"]
  out = jax.jit(layers.GroupNorm().apply)(params, x)
  # Brute force: each group of C/32 channels standardised over all positions and its channels.
  groups = np.asarray(x, np.float64).reshape(shape[0], -1, 32, shape[-1] // 32)
  standard = (groups - groups.mean((1, 3), keepdims=True)) / np.sqrt(
    groups.var((1, 3), keepdims=True) + 1e-5
  )
  np.testing.assert_allclose(out, standard.reshape(shape) * scale + bias, rtol=1e-4, atol=1e-4)
  # Gradients, against flax's nn.GroupNorm with the same parameters (a second formulation).
  flax_norm = nn.GroupNorm(num_groups=32, epsilon=1e-5)
  loss = lambda apply: jax.jit(
    jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))
  )(params, x)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    loss(layers.GroupNorm().apply),
    loss(flax_norm.apply),
  )
  with pytest.raises(ValueError, match="not divisible into 32 groups"):
    layers.GroupNorm().init(jax.random.key(0), jnp.zeros((1, 4, 4, 48)))


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_transforms_compute_a_1d_correlation(tile):
  # F(m, 3): Aᵀ[(G g) ⊙ (Bᵀ d)] = (Σ_k d[i + k] g[k])_i for an input tile d of m + 2 values.
  b_t, g_mat, a_t = cpu_conv.WINOGRAD_TRANSFORMS[tile]
  rng = np.random.default_rng(tile)
  d, g = rng.normal(size=tile + 2), rng.normal(size=3)
  expected = [d[i : i + 3] @ g for i in range(tile)]
  np.testing.assert_allclose(a_t @ ((g_mat @ g) * (b_t @ d)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("size, stride, tile", [(16, 1, 4), (8, 1, 2), (6, 1, None), (16, 2, None)])
def test_winograd_conv_equals_xla_convolution(size, stride, tile):
  # Where no Winograd tile fits (odd multiples, small or strided), impl="winograd" runs
  # `conv_im2col`.
  assert (cpu_conv.winograd_tile(size, size, jnp.float32) if stride == 1 else None) == tile
  x = jax.random.normal(jax.random.key(0), (2, size, size, 24))
  params = _random_params(layers.Conv(40, stride=stride), x)

  @functools.partial(jax.jit, static_argnums=2)
  def value_and_grads(params, x, impl):  # of a loss whose gradient differs per output element
    conv = layers.Conv(40, stride=stride, impl=impl)
    return conv.apply(params, x), jax.grad(
      lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x))), argnums=(0, 1)
    )(params, x)

  (xla, xla_grads), (winograd, winograd_grads) = (
    value_and_grads(params, x, impl) for impl in ("xla", "winograd")
  )
  assert winograd.shape == (2, size // stride, size // stride, 40)
  np.testing.assert_allclose(winograd, xla, rtol=1e-5, atol=2e-5 * float(jnp.std(xla)))
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.std(b))),
    winograd_grads,
    xla_grads,
  )


def test_winograd_conv_has_forward_mode_derivatives():
  # The probability-flow likelihood (sde.py) takes jax.jvp through the score model.
  x, tangent = (jax.random.normal(jax.random.key(i), (1, 16, 16, 8)) for i in (0, 1))
  params = _random_params(layers.Conv(8), x)
  jvp = lambda impl: jax.jvp(
    lambda x: layers.Conv(8, impl=impl).apply(params, x), (x,), (tangent,)
  )[1]
  np.testing.assert_allclose(jvp("winograd"), jvp("xla"), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("k, stride, size", [(3, 2, 7), (3, 1, 4), (1, 1, 5), (1, 2, 6)])
def test_conv_im2col_equals_xla_convolution(k, stride, size):
  x = jax.random.normal(jax.random.key(1), (2, size, size, 5))
  kernel = jax.random.normal(jax.random.key(2), (k, k, 5, 7))
  pad = (k - 1) // 2
  xla = lambda x, kernel: jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((pad, pad), (pad, pad)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  im2col = lambda x, kernel: cpu_conv.conv_im2col(x, kernel, stride)
  np.testing.assert_allclose(im2col(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
  grads = lambda conv: jax.grad(
    lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel))), argnums=(0, 1)
  )(x, kernel)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads(im2col), grads(xla)
  )


def test_winograd_conv_in_bfloat16_is_as_close_as_xla_in_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 64))
  params = _random_params(layers.Conv(64), x)
  exact = layers.Conv(64).apply(params, x)
  error = {
    impl: float(
      jnp.linalg.norm(layers.Conv(64, impl=impl, dtype=jnp.bfloat16).apply(params, x) - exact)
      / jnp.linalg.norm(exact)
    )
    for impl in ("xla", "winograd")
  }
  assert error["winograd"] < 3 * error["xla"] < 0.03, error


def test_winograd_tiles_per_resolution_and_dtype():
  assert [cpu_conv.winograd_tile(s, s, jnp.float32) for s in (32, 16, 12, 8, 4)] == [
    4,
    4,
    2,
    2,
    None,
  ]
  # F(4×4)'s larger coefficients lose bfloat16 precision
  assert cpu_conv.winograd_tile(32, 32, jnp.bfloat16) == 2
  assert cpu_conv.winograd_tile(32, 10, jnp.float32) == 2
  with pytest.raises(ValueError, match="divisible by 4"):
    cpu_conv.conv3x3_winograd(jnp.zeros((1, 8, 6, 2)), jnp.zeros((3, 3, 2, 2)), 4)
  with pytest.raises(ValueError, match="Unknown conv impl"):
    layers.Conv(4, impl="fft").init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))


def test_base2_fourier_features_of_the_input():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
  features = np.asarray(layers.base2_fourier_features(x, (6, 7)))
  assert features.shape == (2, 4, 4, 12)  # [sin of (c0 n6, c0 n7, c1 n6, …), cos of the same]
  args = np.asarray(x)[..., :, None] * 2 * np.pi * np.array([64.0, 128.0])
  np.testing.assert_allclose(features[..., :6], np.sin(args).reshape(2, 4, 4, 6), atol=2e-4)
  np.testing.assert_allclose(features[..., 6:], np.cos(args).reshape(2, 4, 4, 6), atol=2e-4)
  model = UNet(**TINY, out_channels=C, fourier_features=(6, 7))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, C)), jnp.zeros((1,)))
  assert params["params"]["conv_in"]["kernel"].shape[2] == C * 5  # x and its 4·C features


def test_conv_impl_auto_takes_winograd_where_its_4x4_tiles_fit_on_cpu():
  assert jax.default_backend() == "cpu"
  for size, same_as in ((16, "winograd"), (8, "xla")):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 32))
    params = layers.Conv(32).init(jax.random.key(1), x)
    auto = layers.Conv(32, impl="auto").apply(params, x)
    np.testing.assert_array_equal(auto, layers.Conv(32, impl=same_as).apply(params, x))


def test_auto_computes_in_bfloat16_on_accelerators_only(monkeypatch):
  from ddpm_jax import models

  assert models.compute_dtype("auto") == jnp.float32  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.compute_dtype("auto") == jnp.bfloat16
  assert models.get_model({"name": "dit", "dtype": "auto", "depth": 1}).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="Unknown model dtype 'half'"):
    models.compute_dtype("half")


def test_attention_is_softmax_of_scaled_scores_and_fused_on_gpus_only(monkeypatch):
  """`multihead_attention` (jax.nn.dot_product_attention) = softmax(q kᵀ/√d) v per head, written
  out, to 1e-5 in float32; cuDNN's kernel is asked for on a GPU in 16 bits only."""
  from ddpm_jax.models import layers

  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 10, 24))  # [B, L, C], 3 heads of 8
  k = k[:, :7]
  v = v[:, :7]  # 7 keys
  heads = lambda a: a.reshape(a.shape[0], a.shape[1], 3, 8).transpose(0, 2, 1, 3)
  scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(8)
  want = (jax.nn.softmax(scores, -1) @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 10, 24)
  np.testing.assert_allclose(layers.multihead_attention(q, k, v, 3), want, atol=1e-5, rtol=1e-5)
  assert layers.attention_implementation(jnp.bfloat16, 64) is None  # this CPU: XLA's
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.attention_implementation(jnp.bfloat16, 64) == "cudnn"
  assert layers.attention_implementation(jnp.float32, 64) is None
  assert layers.attention_implementation(jnp.bfloat16, 12) is None
