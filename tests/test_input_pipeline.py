"""The input pipeline: deterministic resumable order, per-process shares, sources, clear errors."""

import os

import numpy as np
from PIL import Image
import pytest

from ddpm_jax import pixels
from ddpm_jax.data import loader, order, sources, transforms
from ddpm_jax.data import workers as workers_lib
from helpers import tiny_config


def test_resumed_order_equals_uninterrupted_order():
  data = tiny_config().data
  data.random_flip = True
  kw = dict(split="train", global_batch_size=16, seed=3)
  straight = list(loader.batches(data, start_step=0, num_steps=120, **kw))
  # crosses epoch boundaries
  resumed = list(loader.batches(data, start_step=70, num_steps=50, **kw))
  for a, b in zip(straight[70:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_every_epoch_visits_every_example_once_and_epochs_differ():
  positions = np.arange(3 * 100)
  idx = order.stream_indices(100, seed=0, positions=positions).reshape(3, 100)
  for epoch in idx:
    assert sorted(epoch) == list(range(100))
  assert not np.array_equal(idx[0], idx[1])


def test_processes_read_disjoint_shares_of_the_global_batch():
  shares = [order.local_positions(7, 32, p, 4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(shares), np.arange(7 * 32, 8 * 32))


def test_digits_are_scaled_to_model_range():
  batch = next(loader.batches(tiny_config().data, split="train", global_batch_size=8, seed=0))
  assert batch["image"].shape == (8, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["image"].min() == -1.0 and batch["image"].max() <= 1.0 and batch["image"].max() > 0.9
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))


def test_the_digits_are_scikit_learns_read_without_importing_it(tmp_path):
  import subprocess
  import sys

  from sklearn.datasets import load_digits

  images, labels = sources.load_digits()
  want = load_digits()
  np.testing.assert_array_equal(images, want.images)
  np.testing.assert_array_equal(labels, want.target)
  # a fresh process reads the training split without scikit-learn (nor tensorboardX torch)
  code = (
    "import sys; from ddpm_jax.data import sources; from ddpm_jax.runtime import metric_writer;"
    "sources.DigitsSource('train'); metric_writer.summary_writer(sys.argv[1]).close();"
    "print(sorted(m for m in ('sklearn', 'torch') if m in sys.modules))"
  )
  found = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
  )
  assert found.stdout.strip() == "[]", found.stderr[-2000:]


def test_tfds_cifar10_through_the_same_code_path():
  import tensorflow_datasets as tfds

  data = tiny_config().data
  data.dataset, data.image_size, data.num_channels, data.random_flip = "cifar10", 32, 3, True
  with tfds.testing.mock_data(num_examples=20):
    batch = next(loader.batches(data, split="train", global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 3)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
    sources.get_source("cifar10", "train", str(tmp_path))


def test_image_folder_with_class_subdirectories(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ("cats", "dogs"):
    os.makedirs(tmp_path / cls)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
        tmp_path / cls / f"{i}.png"
      )
  source = sources.get_source("image_folder", "train", str(tmp_path))
  assert len(source) == 6 and [source[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
  image = transforms.to_model_range(source[0]["image"], 8, 3)  # centre-cropped 12×12, resized
  assert image.shape == (8, 8, 3)
  with pytest.raises(FileNotFoundError, match="No images"):
    sources.get_source("image_folder", "train", str(tmp_path / "cats" / "missing"))


def test_worker_processes_give_the_batches_of_the_main_process(tmp_path):
  import ml_collections

  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
  runs = {}
  for workers in (0, 3):
    data = ml_collections.ConfigDict(
      dict(
        dataset="image_folder",
        data_dir=str(tmp_path),
        image_size=8,
        num_channels=3,
        random_flip=True,
        num_workers=workers,
      )
    )
    kw = dict(split="train", global_batch_size=4, seed=1, num_steps=4)
    runs[workers] = list(loader.batches(data, **kw))
    uint8 = list(loader.batches(data, uint8=True, **kw))
    for floats, raw in zip(runs[workers], uint8):  # uint8: the same, unscaled
      np.testing.assert_array_equal(floats["image"], pixels.from_uint8(raw["image"]))
  for a, b in zip(runs[0], runs[3]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # the workers get batch s + 1 before batch s is waited for: one batch in flight ahead, and a
  # consumer that stops early leaves no shared memory behind
  started = []
  original = workers_lib.WorkerBatch.__init__

  def counting(self, *args, **kwargs):
    started.append(len(started))
    original(self, *args, **kwargs)

  data.num_workers = 3
  try:
    workers_lib.WorkerBatch.__init__ = counting
    it = loader.batches(data, **kw)
    first = next(it)
    assert len(started) == 2
    np.testing.assert_array_equal(first["image"], runs[0][0]["image"])
    it.close()
  finally:
    workers_lib.WorkerBatch.__init__ = original


def test_the_epoch_permutation_is_computed_once_and_the_order_unchanged():
  order.epoch_permutation.cache_clear()
  positions = np.arange(90, 130)  # epochs 0 and 1 of 100 examples
  indices = order.stream_indices(100, 7, positions)
  want = np.concatenate(
    [
      np.random.default_rng([7, 0]).permutation(100)[90:],
      np.random.default_rng([7, 1]).permutation(100)[:30],
    ]
  )
  np.testing.assert_array_equal(indices, want)
  np.testing.assert_array_equal(order.stream_indices(100, 7, positions), want)
  info = order.epoch_permutation.cache_info()
  assert (info.misses, info.hits) == (2, 2)
