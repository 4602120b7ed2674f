"""`ddpm_jax.dataset_tool`: an image folder packed into ArrayRecord shards reads back as the same
examples, labels and contexts, in the same (seed, step) order."""

import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from ddpm_jax import pixels
from ddpm_jax.data import dataset_tool, loader, order, sources, workers
from helpers import REPO


def write_folder(root, num_per_class: int = 5):
  rng = np.random.default_rng(0)
  for cls in ("cats", "dogs", "owls"):
    (root / cls).mkdir(parents=True)
    for i in range(num_per_class):
      size = tuple(rng.integers(10, 20, 2))
      Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        root / cls / f"{i}.png"
      )
      np.save(root / cls / f"{i}.clip.npy", rng.normal(size=(2, 4)).astype(np.float32))


def data_config(dataset, data_dir):
  return ml_collections.ConfigDict(
    {
      "dataset": dataset,
      "data_dir": str(data_dir),
      "context_key": "clip",
      "image_size": 8,
      "num_channels": 3,
      "random_flip": True,
      "num_workers": 2,
    }
  )


def test_packed_folder_reads_back_as_the_folder(tmp_path):
  write_folder(tmp_path / "images")
  split_dir = dataset_tool.pack_image_folder(
    str(tmp_path / "images"), str(tmp_path / "packed"), num_shards=4, context_key="clip"
  )
  assert sorted(os.listdir(split_dir)) == sorted(
    dataset_tool.shard_names(4) + ["labels.npy", "contexts.npy", "manifest.json"]
  )
  folder = sources.open_source(data_config("image_folder", tmp_path / "images"), "train")
  packed = sources.open_source(data_config("array_record", tmp_path / "packed"), "train")
  assert len(packed) == len(folder) == 15 and packed.num_classes == folder.num_classes == 3
  for index in range(len(folder)):
    want, got = folder[index], packed[index]
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["context"], want["context"])
    assert got["label"] == want["label"]
  kw = dict(split="train", global_batch_size=6, seed=3, num_steps=3, num_classes=3, context_dim=4)
  for want, got in zip(
    loader.batches(data_config("image_folder", tmp_path / "images"), **kw),
    loader.batches(data_config("array_record", tmp_path / "packed"), **kw),
  ):
    for key in ("image", "label", "context"):
      np.testing.assert_array_equal(got[key], want[key])


def test_packing_from_the_command_line_and_a_context_key_it_was_not_packed_with(tmp_path):
  write_folder(tmp_path / "images", num_per_class=1)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.dataset_tool",
      f"--source={tmp_path / 'images'}",
      f"--out={tmp_path / 'packed'}",
      "--num_shards=2",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  source = sources.get_source("array_record", "train", str(tmp_path / "packed"))
  assert len(source) == 3 and [source[i]["label"] for i in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="packed with the contexts ''"):
    sources.get_source("array_record", "train", str(tmp_path / "packed"), "clip")
  with pytest.raises(FileNotFoundError, match="pack an image folder first"):
    sources.get_source("array_record", "train", str(tmp_path / "images"))
  with pytest.raises(ValueError, match="holds packed images, not latents"):
    sources.get_source("latents", "train", str(tmp_path / "packed"))
  packing_with_an_encoding_flag = subprocess.run(
    [sys.executable, "-m", "ddpm_jax.dataset_tool", f"--source={tmp_path / 'images'}",
     f"--out={tmp_path / 'again'}", "--latent_dtype=float16"],
    cwd=REPO, capture_output=True, text=True,
  )  # fmt: skip
  assert packing_with_an_encoding_flag.returncode != 0
  assert "--latent_dtype: read with --encode_with only" in packing_with_an_encoding_flag.stderr


def test_a_corrupt_image_or_record_is_named_or_skipped_deterministically(tmp_path, caplog):
  import logging

  caplog.set_level(logging.WARNING)
  write_folder(tmp_path / "images")
  truncated = tmp_path / "images" / "dogs" / "2.png"
  truncated.write_bytes(truncated.read_bytes()[:60])  # a header and half a chunk
  dataset_tool.pack_image_folder(str(tmp_path / "images"), str(tmp_path / "packed"), num_shards=2)
  # every example of an epoch: the corrupt one (sorted path 7) among them
  kw = dict(split="train", global_batch_size=15, seed=0, num_steps=2, num_classes=3)
  for dataset, root, where in [
    ("image_folder", tmp_path / "images", f"image 7 ({truncated})"),
    ("array_record", tmp_path / "packed", "record 7 of the ArrayRecord shards in"),
  ]:
    config = data_config(dataset, root)
    config.context_key, config.num_workers, config.random_flip = "", 0, False
    with pytest.raises(workers.CorruptExampleError, match=re.escape(where)):
      list(loader.batches(config, **kw))
    config.skip_corrupt = True
    first = list(loader.batches(config, **kw))
    assert where in caplog.text and "Skipped 1 corrupt example(s)" in caplog.text
    config.num_workers = 2  # the same batches from worker processes: (seed, step) order kept
    for want, got in zip(first, loader.batches(config, **kw)):
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])
    # the corrupt example's place is taken by the next one, 8, at the same position
    indices = order.stream_indices(15, 0, np.arange(15))
    indices[indices == 7] = 8
    source = sources.open_source(config, "train")
    want = workers.load_examples(source, indices, 8, 3, "bilinear")
    np.testing.assert_array_equal(first[0]["image"], pixels.from_uint8(want["image"]))
    caplog.clear()
