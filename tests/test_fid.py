"""The Flax FID Inception against a PyTorch reference with the same random weights; Fréchet distance
and Inception Score against independent formulations."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
import torch.nn.functional as F

from ddpm_jax.evaluation import fid


# A PyTorch rendering of pytorch-fid's FID Inception-v3 (torchvision's Inception3 with pytorch-fid's
# FIDInceptionA/C/E_1/E_2), with the same module names, so that its state dict is the weight file's
# layout.
class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat(
      [
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg(x)),
      ],
      1,
    )


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat(
      [
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, kernel_size=3, stride=2),
      ],
      1,
    )


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat(
      [self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1
    )


class FIDInceptionE(nn.Module):
  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class ReferenceFIDInception(nn.Module):
  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
      FIDInceptionA(192, 32),
      FIDInceptionA(256, 64),
      FIDInceptionA(288, 64),
    )
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b, self.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
    self.Mixed_6d, self.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b, self.Mixed_7c = FIDInceptionE(1280, False), FIDInceptionE(2048, True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x):  # x NCHW in [-1, 1]: pytorch-fid's resize, then the blocks
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      if name == "6d":  # sFID: TF's "mixed_6/conv" (Mixed_6d's 1×1 branch), channels 0..6, NHWC
        spatial = self.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).flatten(1)
      x = getattr(self, f"Mixed_{name}")(x)
    pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pool, self.fc(pool), spatial


def random_reference_net() -> ReferenceFIDInception:
  """Random weights with non-trivial batch-norm statistics, scaled so that activations stay O(1)
  through all the layers (PyTorch's default initialisation lets them fade towards 0, which would
  hide errors)."""
  torch.manual_seed(0)
  net = ReferenceFIDInception().eval()
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if name.endswith("conv.weight") or name == "fc.weight":
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn_like(tensor) * (2.0 / fan_in) ** 0.5)
      elif name.endswith("running_var") or name.endswith("bn.weight"):
        tensor.copy_(torch.rand_like(tensor) + 0.5)
      elif name.endswith("running_mean") or name.endswith("bias"):
        tensor.copy_(0.1 * torch.randn_like(tensor))
  return net


@pytest.fixture(scope="module")
def reference():
  net = random_reference_net()
  return net, fid.convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 341])  # up- and down-sampling to 299
def test_flax_inception_matches_pytorch_reference(reference, size):
  net, params = reference
  images = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref_pool, ref_logits, ref_spatial = (
      t.numpy() for t in net(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    )
  pool, logits, spatial = fid.inception_features_with_spatial(params, jnp.asarray(images))
  # the documented call returns (pool, logits), the same features
  documented = fid.inception_features(params, jnp.asarray(images))
  assert len(documented) == 2
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and spatial.shape == (2, 17 * 17 * 7)
  pairs = [(pool, ref_pool), (logits, ref_logits), (spatial, ref_spatial)]
  pairs += [(documented[0], ref_pool), (documented[1], ref_logits)]
  for got, want in pairs:
    assert np.max(np.abs(np.asarray(got) - want)) <= 1e-4 * np.max(np.abs(want))


@pytest.mark.slow
def test_weights_load_from_npz_and_pth_paths(reference, tmp_path):
  net, params = reference
  npz, pth = tmp_path / "pt_inception.npz", tmp_path / "pt_inception.pth"
  np.savez(npz, **{k: v.numpy() for k, v in net.state_dict().items()})
  torch.save(net.state_dict(), pth)
  for source in (npz, pth):
    loaded = fid.load_inception_params(str(source))
    np.testing.assert_array_equal(
      loaded["params"]["fc"]["kernel"], params["params"]["fc"]["kernel"]
    )


def test_converter_rejects_other_state_dicts(reference):
  _, params = reference
  with pytest.raises(ValueError):
    fid.convert_state_dict({"fc.weight": np.zeros((10, 2048)), "fc.bias": np.zeros(10)})
  with pytest.raises(ValueError, match="Unexpected entry"):
    fid.convert_state_dict({"AuxLogits.fc.weight": np.zeros((3, 3))})


def test_frechet_distance_against_scipy_sqrtm():
  rng = np.random.default_rng(0)
  for n in (500, 10):  # full-rank and singular (fewer samples than dimensions) covariances
    a, b = (
      rng.normal(size=(n, 16)),
      rng.normal(size=(n, 16)) @ rng.normal(size=(16, 16)) * 0.3 + 1.0,
    )
    (mu1, s1), (mu2, s2) = fid.feature_statistics(a), fid.feature_statistics(b)
    # The direct formula with scipy's general matrix square root of the non-symmetric product Σ1Σ2.
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
  # 1-D closed form: (μ1 - μ2)² + (σ1 - σ2)².
  assert fid.frechet_distance([0.5], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(
    1.5**2 + 1.0, rel=1e-12
  )


def test_inception_score_extremes():
  uniform = np.zeros((100, 1008))
  assert fid.inception_score(uniform, num_splits=2)[0] == pytest.approx(1.0)
  confident = np.full((100, 1008), -1e4)
  confident[np.arange(100), np.arange(100) % 10] = 0.0  # one-hot, 10 classes equally often
  mean, std = fid.inception_score(confident, num_splits=5)
  assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_precision_recall_equals_brute_force_k_nearest_neighbour_balls():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(40, 5)), rng.normal(0.7, 1.3, size=(30, 5))

  def brute(points, centres, k):
    inside = 0
    for p in points:
      for c in centres:
        radius = sorted(np.linalg.norm(c - o) for o in centres)[k]  # [0] is c itself
        if np.linalg.norm(p - c) <= radius:
          inside += 1
          break
    return inside / len(points)

  precision, recall = fid.precision_recall(real, fake, k=3)
  assert precision == brute(fake, real, 3) and recall == brute(real, fake, 3)
  # by row blocks of the distance matrix, as for 50,000 features: the same
  assert fid.precision_recall(real, fake, k=3, block_size=7) == (precision, recall)
  assert 0 < precision < 1 and 0 < recall < 1
  assert fid.precision_recall(real, real, k=3) == (1.0, 1.0)


@pytest.mark.slow
def test_reference_statistics_read_adm_reference_batches_and_pytorch_fid_stats(reference, tmp_path):
  from ddpm_jax import pixels
  from ddpm_jax.jobs import evaluate
  from helpers import tiny_config

  _, params = reference
  config = tiny_config()
  # batches of 2: the Inception program of the test above, compiled once
  config.sampling.batch_size, config.eval.precision_recall_images = 2, 10
  images = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
  computed = evaluate.inception_statistics(params, pixels.from_uint8(images), 2, 10)
  # one of ADM's reference batches: its images and the pool statistics
  adm = tmp_path / "VIRTUAL_adm_reference.npz"
  np.savez(adm, arr_0=images, mu=computed["mu"], sigma=computed["sigma"])
  stats = evaluate.reference_statistics(config, params, str(adm))
  for key in evaluate.REFERENCE_KEYS:
    np.testing.assert_allclose(stats[key], computed[key], rtol=1e-6, atol=1e-8)
  assert stats["pool"].shape == (10, 2048) and stats["mu_s"].shape == (17 * 17 * 7,)
  metrics = evaluate.inception_metrics(computed, stats)
  assert set(metrics) == {"fid", "sfid", "precision", "recall"}
  # the same statistics: 0 up to √ of the round-off eigenvalues (~1e-14) of singular covariances
  for name, sigma in (("fid", computed["sigma"]), ("sfid", computed["sigma_s"])):
    assert metrics[name] == pytest.approx(0.0, abs=1e-5 * np.trace(sigma))
  assert (metrics["precision"], metrics["recall"]) == (1.0, 1.0)
  # pytorch-fid's --save-stats: only mu and sigma, so FID alone (inception_metrics skips the rest)
  stats_file = tmp_path / "pytorch_fid_stats.npz"
  np.savez(stats_file, mu=computed["mu"], sigma=computed["sigma"])
  assert set(evaluate.reference_statistics(config, params, str(stats_file))) == {"mu", "sigma"}
  small = {"mu": np.zeros(3), "sigma": np.eye(3), "pool": np.eye(5, 3)}
  assert set(evaluate.inception_metrics(small, {"mu": np.ones(3), "sigma": np.eye(3)})) == {"fid"}
