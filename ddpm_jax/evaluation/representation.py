"""How good a learned representation z = E(x0) is (config.family="representation", `--mode=eval`;
computed by jobs/evaluate.representation_metrics):

probe_accuracy            a linear probe (multinomial logistic regression on standardised z),
                          fitted on the train split, scored on data.eval_split
probe_accuracy_untrained  the same for the encoder at initialisation (same architecture, seed)
probe_accuracy_pixels     the same on the raw pixels
reconstruction_mse        x0 -> x_T by DDIM's ODE given z, decoded given z (mean squared error in
                          [-1, 1], over representation.num_eval_images held-out images)
semantic_consistency      z decoded from fresh noise: the fraction the dataset's feature network
                          (the shipped digits one) assigns to the source image's class

and the direction `--mode=interpolate` moves codes along (Preechakul et al. §5.2): a linear probe's
normal for one class (`probe_direction`), codes moved by `manipulate`.
"""

from __future__ import annotations

import numpy as np


def probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0) -> float:
  """Test accuracy of the logistic-regression probe fitted on (train_x [N, D], train_y [N])."""
  from sklearn.linear_model import LogisticRegression  # here: 0.8 s to import, for probes alone
  from sklearn.preprocessing import StandardScaler

  scaler = StandardScaler().fit(train_x)
  probe = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(train_x), train_y)
  return float(probe.score(scaler.transform(test_x), test_y))


def probe_direction(codes, labels, target: int, c: float = 1.0) -> np.ndarray:
  """The code-space step [D] of one unit along a probe's normal: a logistic regression of "is
  `target`" on standardised codes z̃ = (z - μ)/σ (weights w), stepped √D·ŵ in z̃ (a unit step moves
  z̃ by its typical norm, as Preechakul et al.'s √512 scaling), so z = z + s·σ ⊙ √D·ŵ."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  scaler = StandardScaler().fit(codes)
  probe = LogisticRegression(C=c, max_iter=5000)
  probe.fit(scaler.transform(codes), np.asarray(labels) == target)
  w = probe.coef_[0]
  return (scaler.scale_ * np.sqrt(len(w)) * w / np.linalg.norm(w)).astype(np.float32)


def manipulate(codes, direction, scales):
  """Codes [N, D] moved along `direction` [D] by each of `scales` [S]: [N, S, D] (numpy or JAX)."""
  return codes[:, None, :] + scales[None, :, None] * direction
