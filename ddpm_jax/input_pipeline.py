"""Input pipeline: random-access sources, a deterministic resumable order, per-process shards,
prefetch.

Every dataset is a random-access source of `{"image": uint8 [H, W, C], "label": int}`:
  - tfds datasets through `tfds.data_source` (ArrayRecord files; no TensorFlow needed to read them):
    cifar10, celeb_a_hq/256, lsun/<category>, downsampled_imagenet/64x64, mnist, fashion_mnist, …
  - "digits": the 8×8 handwritten digits that ship inside scikit-learn (offline; used by
  configs/default.py);
  - "image_folder": every image file under `data.data_dir` (labels from sub-directory names).

The order is a pure function of (seed, step): the example stream is a concatenation of per-epoch
permutations, global batch s takes stream positions [s·B, (s+1)·B), and process p reads rows
[p·B/P, (p+1)·B/P) of it. Restarting at step s therefore continues exactly where an uninterrupted
run would be, with no iterator state to checkpoint. Random flips are keyed by the stream position
too.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Protocol

import jax
import numpy as np
from PIL import Image

from ddpm_jax import pixels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...


class DigitsSource:
  """scikit-learn's 1,797 8×8 digits (values 0–16) as uint8 images; the last 297 are the test
  split."""

  NUM_TRAIN = 1500

  def __init__(self, split: str):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    rows = slice(None, self.NUM_TRAIN) if split == "train" else slice(self.NUM_TRAIN, None)
    self.images, self.labels = images[rows], digits.target[rows]

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": int(self.labels[index])}


class ImageFolderSource:
  """All images under `root` (sorted paths); the label is the index of the first-level
  sub-directory."""

  def __init__(self, root: str):
    self.paths = sorted(
      os.path.join(d, f)
      for d, _, files in os.walk(root)
      for f in files
      if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not self.paths:
      raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}.")
    classes = sorted(
      {
        os.path.relpath(p, root).split(os.sep)[0]
        for p in self.paths
        if os.sep in os.path.relpath(p, root)
      }
    )
    self.class_index = {c: i for i, c in enumerate(classes)}
    self.root = root

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[index]
    with Image.open(path) as img:
      image = np.asarray(img.convert("RGB"))
    top = os.path.relpath(path, self.root).split(os.sep)[0]
    return {"image": image, "label": self.class_index.get(top, 0)}


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split in memory as (uint8 images [N, H, W, C], labels [N]), for small datasets
  (evaluation)."""
  source = get_source(data_config.dataset, split, data_config.get("data_dir"))
  examples = [source[i] for i in range(len(source))]
  return np.stack([e["image"] for e in examples]), np.asarray([e["label"] for e in examples])


def get_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
  """The random-access source of `dataset`'s `split`, or one error that says how to prepare it."""
  if dataset == "digits":
    return DigitsSource(split)
  if dataset == "image_folder":
    if not data_dir:
      raise ValueError(
        "dataset='image_folder' needs config.data.data_dir, the directory of images."
      )
    return ImageFolderSource(
      os.path.join(data_dir, split) if os.path.isdir(os.path.join(data_dir, split)) else data_dir
    )
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not prepared here"
    raise FileNotFoundError(
      f"tfds dataset {dataset!r} (split {split!r}) is not prepared in "
      f"{data_dir or tfds.core.constants.DATA_DIR}. "
      f"Prepare it once on a machine with network access:\n"
      f"  tfds build {dataset} --file_format=array_record --data_dir=<dir>\n"
      "then set --config.data.data_dir=<dir> (celeb_a_hq also needs its manual download, see the "
      f"tfds catalog). Cause: {type(e).__name__}: {e}"
    ) from e


def to_model_range(image: np.ndarray, image_size: int, num_channels: int) -> np.ndarray:
  """uint8 [H, W, C] -> float32 [S, S, num_channels] in [-1, 1]: centre crop to a square, bilinear
  resize."""
  if image.ndim == 2:
    image = image[..., None]
  h, w = image.shape[:2]
  if h != w:
    side = min(h, w)
    image = image[
      (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side
    ]
  if image.shape[0] != image_size:
    mode = "L" if image.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
    image = np.asarray(pil.resize((image_size, image_size), Image.BILINEAR)).reshape(
      image_size, image_size, -1
    )
  if image.shape[-1] != num_channels:
    if image.shape[-1] == 1:
      image = np.repeat(image, num_channels, axis=-1)
    elif num_channels == 1:
      image = np.round(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[
        ..., None
      ]
  return pixels.from_uint8(image)


def stream_indices(num_examples: int, seed: int, positions: np.ndarray) -> np.ndarray:
  """Example index at each stream position: epoch e = position // N uses its own permutation of [0,
  N)."""
  epochs = positions // num_examples
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    mask = epochs == epoch
    out[mask] = perm[positions[mask] % num_examples]
  return out


def local_positions(
  step: int, global_batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Stream positions of this process's rows of global batch `step`."""
  local = global_batch_size // process_count
  start = step * global_batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


def load_batch(
  source: Source,
  positions: np.ndarray,
  *,
  seed: int,
  image_size: int,
  num_channels: int,
  random_flip: bool,
) -> dict[str, np.ndarray]:
  indices = stream_indices(len(source), seed, positions)
  examples = [source[int(i)] for i in indices]
  images = np.stack(
    [to_model_range(np.asarray(ex["image"]), image_size, num_channels) for ex in examples]
  )
  # a coin per stream position; 3-word seeds keep it apart from the 2-word permutation seeds
  if random_flip:
    flip = np.array([np.random.default_rng([seed, int(p), 1]).random() < 0.5 for p in positions])
    images[flip] = images[flip, :, ::-1]
  labels = np.array([int(ex.get("label", 0)) for ex in examples], dtype=np.int32)
  return {"image": images, "label": labels}


def batches(
  data_config,
  *,
  split: str,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  num_steps: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches start_step, start_step + 1, … (forever unless
  `num_steps`)."""
  process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(
      f"Batch size {global_batch_size} is not divisible by {process_count} processes."
    )
  source = get_source(data_config.dataset, split, data_config.get("data_dir"))
  step = start_step
  while num_steps is None or step < start_step + num_steps:
    positions = local_positions(step, global_batch_size, process_index, process_count)
    yield load_batch(
      source,
      positions,
      seed=seed,
      image_size=data_config.image_size,
      num_channels=data_config.num_channels,
      random_flip=data_config.random_flip and split == "train",
    )
    step += 1


def prefetch(iterator: Iterator, transfer, size: int = 2) -> Iterator:
  """Runs `iterator` and `transfer` (e.g. onto the mesh) in a background thread, `size` batches
  ahead."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def worker():
    try:
      for item in iterator:
        buffer.put(transfer(item))
      buffer.put(done)
    except BaseException as e:  # surfaced in the consumer thread
      buffer.put(e)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = buffer.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
