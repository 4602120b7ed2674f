"""Sample quality measured offline with a feature network trained on the dataset itself
(`feature_net.py`):

  feature_fd          Fréchet distance of the samples' features to the test split's (the FID
                      formula, `fid.py`)
  feature_class_score exp(E KL(p(y|x) ‖ p(y))) of its class probabilities (the Inception Score
                      formula)
  class_accuracy      for class-conditional samples: how often the network reads the class they
                      were drawn for
  memorized_fraction  samples closer to a training image than `quantile` of held-out test images
                      ever are

Images are uint8 [N, H, W, C] throughout, as `generate` returns and the data sources store them.
"""

from __future__ import annotations

import numpy as np

from ddpm_jax import pixels
from ddpm_jax.evaluation import feature_net, fid


def features_and_logits(params, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The feature network's features [N, F] and class logits [N, K] of uint8 images."""
  return feature_net.apply(params, pixels.from_uint8(images))


def feature_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  return fid.frechet_distance(
    *fid.feature_statistics(features_a), *fid.feature_statistics(features_b)
  )


def nearest_neighbour_distances(
  images: np.ndarray, reference: np.ndarray, batch_size: int = 256
) -> np.ndarray:
  """Root-mean-square pixel distance (in [0, 1] units) from each image to its nearest reference
  image: [N]."""
  flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1) / 255.0
  x, ref = flat(images), flat(reference)
  ref_sq = np.sum(ref**2, axis=1)
  out = []
  for i in range(0, len(x), batch_size):
    part = x[i : i + batch_size]
    sq = np.sum(part**2, axis=1)[:, None] - 2.0 * part @ ref.T + ref_sq[None, :]
    out.append(np.sqrt(np.maximum(sq.min(axis=1), 0.0) / x.shape[1]))
  return np.concatenate(out)


def memorization(
  samples: np.ndarray,
  train: np.ndarray,
  test: np.ndarray,
  quantile: float = 0.01,
  margin: float = 0.5,
) -> dict[str, np.ndarray | float]:
  """Flags samples nearer to a training image than `margin` × the `quantile` of the test images' own
  nearest-training-image distances: held-out real images are not copies, so anything much closer
  than (almost) all of them is. -> dict(distance [N], flagged [N] bool, threshold)."""
  threshold = margin * float(np.quantile(nearest_neighbour_distances(test, train), quantile))
  distance = nearest_neighbour_distances(samples, train)
  return {"distance": distance, "flagged": distance < threshold, "threshold": threshold}


def evaluate_samples(
  params, samples: np.ndarray, labels: np.ndarray | None, train: np.ndarray, test: np.ndarray
) -> dict[str, float]:
  """All four metrics of uint8 samples against the dataset's uint8 train and test splits (class
  accuracy only when `labels`, the classes the samples were drawn for, are given)."""
  sample_features, sample_logits = features_and_logits(params, samples)
  test_features, _ = features_and_logits(params, test)
  results = {
    "feature_fd": feature_frechet_distance(sample_features, test_features),
    "feature_class_score": fid.inception_score(sample_logits)[0],
    "memorized_fraction": float(np.mean(memorization(samples, train, test)["flagged"])),
  }
  if labels is not None:
    results["class_accuracy"] = float(np.mean(np.argmax(sample_logits, -1) == labels))
  return results
