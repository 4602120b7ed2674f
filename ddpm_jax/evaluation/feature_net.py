r"""A small CNN classifier of an offline dataset: the feature network of the offline sample-quality
metrics (`offline_metrics.py`), where pretrained Inception weights cannot be fetched.

  python -m ddpm_jax.evaluation.feature_net --dataset=digits --image_size=8 \
      --out=runs/digits_feature_net.npz

  python -m ddpm_jax.evaluation.feature_net --embed=train --out=runs/digits_train_features.npz

writes a split's features as embeddings ("embedding" [N, F], "label" [N]: a diffusion prior's data,
or, with "{split}" in its path, an unCLIP decoder's data.embedding_key) with the shipped weights
(or --weights).

The weights for scikit-learn's digits at 8×8 ship with the package
(`assets/digits_8_feature_net.npz`, 61 k parameters, 240 kB), trained by the command above with its
defaults; their test accuracy is stored with them and printed by the command. `--mode=eval` finds
them by dataset and size (`default_path`), or takes `config.eval.feature_net_path`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from absl import logging
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddpm_jax import pixels
from ddpm_jax.data import sources
from ddpm_jax.runtime import files

Array = jax.Array
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


class FeatureNet(nn.Module):
  """conv32 → conv64 → avg-pool 2 → conv64 → global mean → dense `features` (ReLU) → dense logits.
  images [B, H, W, C] in [-1, 1] -> (features [B, F], logits [B, K])."""

  num_classes: int = 10
  features: int = 64

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = nn.relu(nn.Conv(32, (3, 3))(x))
    h = nn.relu(nn.Conv(64, (3, 3))(h))
    h = nn.avg_pool(h, (2, 2), (2, 2))
    h = nn.relu(nn.Conv(64, (3, 3))(h))
    features = nn.relu(nn.Dense(self.features)(jnp.mean(h, axis=(1, 2))))
    return features, nn.Dense(self.num_classes)(features)


def _split_arrays(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = sources.load_split(data_config, split)
  return pixels.from_uint8(images), labels


def train(
  data_config,
  num_classes: int = 10,
  steps: int = 2000,
  batch_size: int = 128,
  seed: int = 0,
  features: int = 64,
) -> tuple[dict, float]:
  """Adam on the train split with random ±1-pixel shifts -> (params, test accuracy)."""
  images, labels = _split_arrays(data_config, "train")
  if images.shape[1] != data_config.image_size:
    raise ValueError(
      f"{data_config.dataset} images are {images.shape[1]}×{images.shape[2]}, not "
      f"image_size={data_config.image_size}: the feature network sees the data as stored."
    )
  net = FeatureNet(num_classes, features)
  params = net.init(jax.random.key(seed), images[:1])
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    index_rng, shift_rng = jax.random.split(rng)
    index = jax.random.randint(index_rng, (batch_size,), 0, len(images))
    shift = jax.random.randint(shift_rng, (2,), -1, 2)
    x = jnp.roll(jnp.asarray(images)[index], shift, axis=(1, 2))
    loss_fn = lambda p: optax.losses.softmax_cross_entropy_with_integer_labels(
      net.apply(p, x)[1], jnp.asarray(labels)[index]
    ).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    if (i + 1) % 500 == 0 or i + 1 == steps:
      logging.info("feature net step %d / %d: loss %.4f", i + 1, steps, float(loss))
  test_images, test_labels = _split_arrays(data_config, "test")
  _, logits = apply(params, test_images)
  return params, float(np.mean(np.argmax(logits, -1) == test_labels))


def apply(params, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, F], logits [N, K]) of images [N, H, W, C] in [-1, 1], in batches."""
  dense = params["params"]
  net = FeatureNet(dense["Dense_1"]["kernel"].shape[1], dense["Dense_0"]["kernel"].shape[1])
  fn = jax.jit(net.apply)
  outs = [
    fn(params, jnp.asarray(images[i : i + batch_size], jnp.float32))
    for i in range(0, len(images), batch_size)
  ]
  return (
    np.concatenate([np.asarray(f) for f, _ in outs]),
    np.concatenate([np.asarray(logit) for _, logit in outs]),
  )


def save(params, path: str, **meta) -> None:
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  files.save_npz(path, meta=np.asarray(json.dumps(meta)), **flat)


def load(path: str) -> tuple[dict, dict]:
  """-> (params, meta: dataset, image_size, test_accuracy, …)."""
  data = files.load_npz(path)
  meta = json.loads(str(data.pop("meta")))
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in data.items()}, sep="/"), meta


def default_path(dataset: str, image_size: int) -> str | None:
  """The shipped weights for this dataset and size, if any."""
  path = os.path.join(ASSETS, f"{dataset.replace('/', '_')}_{image_size}_feature_net.npz")
  return path if os.path.exists(path) else None


def embed_split(data_config, split: str, params) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, F], labels [N]) of a split's images."""
  images, labels = _split_arrays(data_config, split)
  return apply(params, images)[0], np.asarray(labels, np.int32)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--image_size", type=int, default=8)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--out", required=True, help="the .npz to write (local or gs://)")
  parser.add_argument("--embed", default=None, help="write this split's features instead")
  parser.add_argument("--weights", default=None, help="--embed's weights (default: shipped)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  logging.set_verbosity(logging.INFO)
  data_config = ml_collections.ConfigDict(
    {"dataset": args.dataset, "image_size": args.image_size, "data_dir": args.data_dir}
  )
  if args.embed:
    weights = args.weights or default_path(args.dataset, args.image_size)
    if weights is None:
      raise SystemExit(f"No shipped weights for {args.dataset} at {args.image_size}: --weights.")
    features, labels = embed_split(data_config, args.embed, load(weights)[0])
    files.save_npz(args.out, embedding=features, label=labels)
    print(f"Wrote the features {features.shape} of split {args.embed!r} to {args.out}.")
    return
  params, accuracy = train(data_config, args.num_classes, args.steps)
  save(
    params,
    args.out,
    dataset=args.dataset,
    image_size=args.image_size,
    num_classes=args.num_classes,
    steps=args.steps,
    test_accuracy=accuracy,
  )
  print(f"Test accuracy {accuracy:.4f}; wrote {args.out}.")


if __name__ == "__main__":
  main()
