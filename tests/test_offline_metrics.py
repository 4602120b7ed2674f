"""Offline sample-quality metrics with the shipped digits feature network."""

import ml_collections
import numpy as np
import pytest

from ddpm_jax.data import sources
from ddpm_jax.evaluation import feature_net, offline_metrics


def _split(split):
  return sources.load_split(ml_collections.ConfigDict({"dataset": "digits"}), split)


@pytest.fixture(scope="module")
def shipped():
  path = feature_net.default_path("digits", 8)
  assert path is not None
  return feature_net.load(path)


def test_shipped_feature_net_classifies_the_test_split(shipped):
  params, meta = shipped
  images, labels = _split("test")
  _, logits = offline_metrics.features_and_logits(params, images)
  accuracy = np.mean(np.argmax(logits, -1) == labels)
  assert accuracy == pytest.approx(meta["test_accuracy"], abs=1e-6) and accuracy > 0.95
  assert meta["dataset"] == "digits" and meta["image_size"] == 8


def test_feature_frechet_distance_is_near_zero_between_halves_and_grows_with_noise(shipped):
  params, _ = shipped
  test, _ = _split("test")
  rng = np.random.default_rng(0)
  order = rng.permutation(len(test))
  half_a, half_b = test[order[:148]], test[order[148:]]
  features = lambda images: offline_metrics.features_and_logits(params, images)[0]
  reference = features(half_b)
  # the distance's natural scale: Tr Σ of the features
  spread = np.trace(np.cov(reference, rowvar=False))
  distances = []
  for noise in (0.0, 80.0, 160.0):
    noisy = np.clip(half_a + rng.normal(0, noise, half_a.shape), 0, 255).round().astype(np.uint8)
    distances.append(offline_metrics.feature_frechet_distance(features(noisy), reference))
  # Two samples of 148 real digits differ only by sampling error (a few % of Tr Σ); noise moves them
  # apart.
  assert distances[0] < 0.1 * spread and distances[0] < distances[1] < distances[2], (
    distances,
    spread,
  )
  assert distances[2] > 5 * distances[0]


def test_memorization_flags_copies_of_training_images_and_passes_noise():
  train, _ = _split("train")
  test, _ = _split("test")
  rng = np.random.default_rng(0)
  copies = train[rng.choice(len(train), 20, replace=False)]
  noise = rng.integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
  result = offline_metrics.memorization(np.concatenate([copies, noise, test[:50]]), train, test)
  assert result["flagged"][:20].all() and not result["flagged"][20:40].any()
  assert result["flagged"][40:].mean() <= 0.05  # held-out real digits are not copies
  assert result["threshold"] > 0


@pytest.mark.slow
def test_feature_net_trains_saves_and_loads(tmp_path, shipped):
  config = ml_collections.ConfigDict({"dataset": "digits", "image_size": 8, "data_dir": None})
  params, accuracy = feature_net.train(config, steps=30, batch_size=32)
  assert 0.0 <= accuracy <= 1.0
  feature_net.save(params, str(tmp_path / "net.npz"), dataset="digits", test_accuracy=accuracy)
  loaded, meta = feature_net.load(str(tmp_path / "net.npz"))
  x = np.zeros((2, 8, 8, 1), np.float32)
  np.testing.assert_allclose(
    feature_net.apply(loaded, x)[1], feature_net.apply(params, x)[1], rtol=1e-6
  )
  assert meta["test_accuracy"] == accuracy
  with pytest.raises(ValueError, match="image_size=16"):
    feature_net.train(
      ml_collections.ConfigDict({"dataset": "digits", "image_size": 16, "data_dir": None}), steps=1
    )
