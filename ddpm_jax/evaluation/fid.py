"""FID and Inception Score with a Flax port of the FID Inception-v3.

The network is the one pytorch-fid and the TensorFlow FID code use (Inception-v3 of 2015-12-05 with
the FID-specific pooling of its Mixed blocks, 1008 logits), with parameter names that mirror
pytorch-fid's state dict, so that its published weight file `pt_inception-2015-12-05-6726825d.pth`
converts 1:1:

  params = fid.load_inception_params("pt_inception-2015-12-05-6726825d.pth")   # or a converted .npz
  pool, logits = fid.inception_features(params, images)  # images NHWC in [-1, 1]
  pool, logits, spatial = fid.inception_features_with_spatial(params, images)  # + sFID's
  fid.frechet_distance(mu1, sigma1, mu2, sigma2); fid.inception_score(logits)
  fid.precision_recall(real_pool, fake_pool, k=3)

sFID is the Fréchet distance of the spatial features (ADM's evaluator, after Nash et al. 2021).

Nothing is downloaded: the weight file comes from a path the user has (local or a bucket, through
etils.epath). Reading a .pth needs PyTorch (the `bench` or `test` extra); `python -m
ddpm_jax.evaluation.fid --convert IN.pth OUT.npz` converts it once.
"""

from __future__ import annotations

import sys
from typing import Sequence

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

Array = jax.Array
BN_EPS = 1e-3  # torchvision's BasicConv2d


class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (inference statistics) -> ReLU, as torchvision's BasicConv2d."""

  features: int
  kernel: Sequence[int]
  stride: int = 1
  padding: Sequence[int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = tuple((p, p) for p in self.padding)
    x = nn.Conv(
      self.features,
      tuple(self.kernel),
      (self.stride, self.stride),
      pad,
      use_bias=False,
      name="conv",
    )(x)
    bn = {
      k: self.param(
        k,
        nn.initializers.zeros if k in ("bias", "mean") else nn.initializers.ones,
        (self.features,),
      )
      for k in ("scale", "bias", "mean", "var")
    }
    x = (x - bn["mean"]) * (bn["scale"] * jax.lax.rsqrt(bn["var"] + BN_EPS)) + bn["bias"]
    return nn.relu(x)


def _avg_pool_exclude_padding(x: Array) -> Array:
  """3×3 stride-1 average pooling with padding 1 that averages only real pixels
  (count_include_pad=False)."""
  window = lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
  return window(x) / window(jnp.ones(x.shape[:3] + (1,), x.dtype))


def _max_pool(x: Array, stride: int, padding: str = "VALID") -> Array:
  return nn.max_pool(x, (3, 3), (stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(
      BasicConv(48, (1, 1), name="branch5x5_1")(x)
    )
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_exclude_padding(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_exclude_padding(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(
      BasicConv(192, (1, 1), name="branch3x3_1")(x)
    )
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """FID's Mixed_7b pools by averaging without padding; Mixed_7c by max pooling
  (`max_pool=True`)."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _max_pool(x, 1, "SAME") if self.max_pool else _avg_pool_exclude_padding(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# sFID's spatial features (Nash et al. 2021, ADM's evaluator): the first 7 channels of the TF
# graph's "mixed_6/conv", the 1×1 branch of Mixed_6d, at 17×17
SPATIAL_CHANNELS = 7


class FIDInceptionV3(nn.Module):
  """[B, 299, 299, 3] in [-1, 1] -> (pool3 features [B, 2048], logits [B, 1008], spatial features
  [B, 17·17·7] in NHWC order)."""

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
      if name == "Mixed_6d":  # its output's first channels are those of its branch1x1
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    return pool, nn.Dense(1008, name="fc")(pool), spatial


def resize_bilinear(images: Array, size: int = 299) -> Array:
  """Bilinear resize with half-pixel centres and no anti-aliasing: PyTorch's
  `F.interpolate(mode="bilinear", align_corners=False)`, which pytorch-fid applies before the
  network."""
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), method="bilinear", antialias=False)


@jax.jit
def inception_features(params, images: Array) -> tuple[Array, Array]:
  """images NHWC in [-1, 1], any size (grey images are repeated to RGB), resized to 299×299
  bilinearly as pytorch-fid does -> (pool3 [B, 2048], logits [B, 1008])."""
  return inception_features_with_spatial(params, images)[:2]


def inception_features_with_spatial(params, images: Array) -> tuple[Array, Array, Array]:
  """`inception_features` and sFID's spatial features [B, 2023] (the first 7 channels of Mixed_6d's
  1×1 branch at 17×17): -> (pool, logits, spatial)."""
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return FIDInceptionV3().apply(params, resize_bilinear(images))


# --------------------------------------------------------------------------------------------------
# Weights: pytorch-fid's state dict -> Flax parameters.


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """pytorch-fid state dict (numpy arrays) -> {"params": …} of `FIDInceptionV3`; every entry must be
  used."""
  params: dict = {}
  bn_names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    parts = key.split(".")
    value = np.asarray(value, np.float32)
    # Linear [out, in] -> [in, out]
    if len(parts) == 2 and parts[0] == "fc" and parts[1] in ("weight", "bias"):
      path, leaf = ["fc"], {"weight": "kernel", "bias": "bias"}[parts[1]]
      value = value.T if parts[1] == "weight" else value
    elif len(parts) >= 3 and parts[-2:] == ["conv", "weight"]:  # OIHW -> HWIO
      path, leaf, value = parts[:-1], "kernel", value.transpose(2, 3, 1, 0)
    elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in bn_names:
      path, leaf = parts[:-2], bn_names[parts[-1]]
    else:
      raise ValueError(f"Unexpected entry {key!r} in the Inception state dict.")
    node = params
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))[
    "params"
  ]
  got = jax.tree_util.tree_map(np.shape, params)
  want = jax.tree_util.tree_map(lambda a: a.shape, expected)
  if got != want:
    raise ValueError(
      "The state dict does not have the FID Inception-v3's parameters (pytorch-fid's "
      "pt_inception-2015-12-05 file is expected)."
    )
  return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def load_inception_params(path: str) -> dict:
  """Parameters from pytorch-fid's `pt_inception-2015-12-05-*.pth` (needs PyTorch) or a converted
  `.npz`, at a local or bucket path (gs://…, read through etils.epath)."""
  with epath.Path(path).open("rb") as f:
    if path.endswith(".npz"):
      with np.load(f) as data:
        return convert_state_dict(dict(data))
    import torch  # only to read the .pth container

    state_dict = torch.load(f, map_location="cpu", weights_only=True)
  return convert_state_dict({k: v.numpy() for k, v in state_dict.items()})


# --------------------------------------------------------------------------------------------------
# Statistics.


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """-> (mean [D], covariance [D, D]) in float64, the covariance with the unbiased 1/(N-1) as
  pytorch-fid."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a positive semi-definite matrix (round-off negative eigenvalues
  clipped)."""
  eigenvalues, eigenvectors = np.linalg.eigh(sigma)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1 - μ2‖² + Tr(Σ1) + Tr(Σ2) - 2 Tr((Σ1 Σ2)^½) in float64 (Heusel et al. 2017, eq. 6).

  Tr((Σ1 Σ2)^½) = Σ_i √λ_i of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the eigenvalues of
  Σ1Σ2: two symmetric eigendecompositions, stable for singular covariances (fewer samples than 2048
  dimensions) and several times faster than `scipy.linalg.sqrtm` of the non-symmetric product.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = (
    np.atleast_2d(np.asarray(sigma1, np.float64)),
    np.atleast_2d(np.asarray(sigma2, np.float64)),
  )
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
      f"Mismatched statistics: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}."
    )
  root1 = _psd_sqrt(sigma1)
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) ‖ p(y))) over `num_splits` splits -> (mean, std) (Salimans et al. 2016), with
  the softmax over all 1008 logits as the original Inception Score code."""
  logits = np.asarray(logits, np.float64)
  num_splits = min(num_splits, len(logits))  # no empty splits for small sample counts
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, num_splits):
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances [len(a), len(b)] in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  sq = np.sum(a**2, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b**2, axis=1)[None, :]
  return np.sqrt(np.maximum(sq, 0.0))


def _row_blocks(n: int, block_size: int):
  return (slice(start, start + block_size) for start in range(0, n, block_size))


def _knn_radii(features: np.ndarray, k: int, block_size: int) -> np.ndarray:
  """Distance of each point to its k-th nearest other point of the same set: [N], by row blocks of
  the distance matrix (memory N·block_size, not N²)."""
  return np.concatenate(
    [
      np.partition(_pairwise_distances(features[rows], features), k, axis=1)[:, k]  # [:, 0]: itself
      for rows in _row_blocks(len(features), block_size)
    ]
  )


def precision_recall(
  real: np.ndarray, fake: np.ndarray, k: int = 3, block_size: int = 1024
) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019, as ADM's evaluator): precision is the
  fraction of `fake` features inside some real feature's k-NN ball (radius: its distance to its
  k-th nearest real neighbour), recall the fraction of `real` ones inside some fake ball."""

  def coverage(points: np.ndarray, centres: np.ndarray) -> float:
    radii = _knn_radii(centres, k, block_size)
    inside = [
      np.any(_pairwise_distances(points[rows], centres) <= radii[None, :], axis=1)
      for rows in _row_blocks(len(points), block_size)
    ]
    return float(np.mean(np.concatenate(inside)))

  return coverage(fake, real), coverage(real, fake)


def main(argv: list[str]) -> None:
  if len(argv) != 4 or argv[1] != "--convert":
    raise SystemExit(
      "usage: python -m ddpm_jax.evaluation.fid --convert pt_inception-2015-12-05-6726825d.pth "
      "out.npz"
    )
  import torch

  state_dict = torch.load(argv[2], map_location="cpu", weights_only=True)
  convert_state_dict({k: v.numpy() for k, v in state_dict.items()})  # validates
  np.savez(
    argv[3],
    **{k: v.numpy() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")},
  )
  print(f"Wrote {argv[3]}.")


if __name__ == "__main__":
  main(sys.argv)
