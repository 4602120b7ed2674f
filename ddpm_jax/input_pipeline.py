"""Input pipeline: random-access sources, a deterministic resumable order, per-process shards,
parallel decoding, prefetch.

Every dataset is a random-access source of `{"image": uint8 [H, W, C], "label": int}` with its
`num_classes` (0: no labels), and `"context": float32 [L, D]` where `data.context_key` names one,
described before it is opened by `DATASETS` (splits, classes, the held-out split):
  - tfds datasets through `tfds.data_source` (ArrayRecord files; no TensorFlow needed to read them):
    cifar10, celeb_a_hq/256, lsun/<category>, imagenet2012, imagenet_resized/64x64, mnist, …
  - "digits": the 8×8 handwritten digits that ship inside scikit-learn (offline; used by
    configs/default.py);
  - "image_folder": every image file under `data.data_dir` (labels from sub-directory names; the
    context of `a/b.png` is the sidecar array `a/b.<context_key>.npy`);
  - "array_record": an image folder packed into ArrayRecord shards by `ddpm_jax.dataset_tool`.

The order is a pure function of (seed, step): the example stream is a concatenation of per-epoch
permutations, global batch s takes stream positions [s·B, (s+1)·B), and process p reads rows
[p·B/P, (p+1)·B/P) of it. Restarting at step s therefore continues exactly where an uninterrupted
run would be, with no iterator state to checkpoint. Random flips are keyed by the stream position
too, and `data.num_workers` processes decode and resize a batch's examples in that same order.
"""

from __future__ import annotations

import concurrent.futures
from contextlib import nullcontext
import dataclasses
import functools
import io
import json
import multiprocessing
from multiprocessing import shared_memory
import os
import queue
import threading
from typing import Iterator, Protocol

from absl import logging
import numpy as np
from PIL import Image

from ddpm_jax import pixels
from ddpm_jax.errors import InvalidConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset has, known without reading it: its splits, its classes (0: no labels), and the
  held-out split evaluations use (a held-out slice of "train" where that is its only split)."""

  splits: tuple[str, ...]
  num_classes: int
  eval_split: str
  train_split: str = "train"


DATASETS = {
  "digits": DatasetSpec(("train", "test"), 10, "test"),
  "image_folder": DatasetSpec(("train", "test", "validation"), -1, "test"),  # -1: its sub-folders
  # an image folder packed by ddpm_jax.dataset_tool
  "array_record": DatasetSpec(("train", "test", "validation"), -1, "test"),
  "cifar10": DatasetSpec(("train", "test"), 10, "test"),
  "mnist": DatasetSpec(("train", "test"), 10, "test"),
  "fashion_mnist": DatasetSpec(("train", "test"), 10, "test"),
  "celeb_a": DatasetSpec(("train", "validation", "test"), 0, "validation"),
  # 30,000 images in one split: the last 5 % are held out (DDPM's FID is against all 30,000)
  "celeb_a_hq": DatasetSpec(("train",), 0, "train[95%:]", "train[:95%]"),
  "lsun": DatasetSpec(("train", "validation"), 0, "validation"),
  "downsampled_imagenet": DatasetSpec(("train", "validation"), 0, "validation"),
  "imagenet_resized": DatasetSpec(("train", "validation"), 1000, "validation"),
  "imagenet2012": DatasetSpec(("train", "validation"), 1000, "validation"),
  "oxford_flowers102": DatasetSpec(("train", "validation", "test"), 102, "test"),
}
RESIZE_METHODS = ("bilinear", "adm")


def dataset_spec(dataset: str) -> DatasetSpec | None:
  """The spec of `dataset` (a tfds name may carry a /config: lsun/church_outdoor)."""
  return DATASETS.get(dataset.split("/")[0])


def split_name(split: str) -> str:
  """ "train[:95%]" -> "train"."""
  return split.split("[")[0]


class Source(Protocol):
  num_classes: int  # 0: no labels
  context_key: str  # "": no "context" entry
  decodes: bool  # whether reading an example decodes a file (worth data.num_workers processes)

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...


class DigitsSource:
  """scikit-learn's 1,797 8×8 digits (values 0–16) as uint8 images; the last 297 are the test
  split."""

  NUM_TRAIN = 1500
  num_classes = 10
  context_key = ""
  decodes = False

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
  sub-directory, and a folder without sub-directories has no labels. With `context_key`, the
  context of image `stem.png` is the array in `stem.<context_key>.npy` beside it."""

  decodes = True

  def __init__(self, root: str, context_key: str = ""):
    self.paths = sorted(
      os.path.join(d, f)
      for d, _, files in os.walk(root)
      for f in files
      if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not self.paths:
      raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}.")
    tops = [os.path.relpath(p, root).split(os.sep) for p in self.paths]
    classes = sorted({parts[0] for parts in tops if len(parts) > 1})
    self.class_index = {c: i for i, c in enumerate(classes)}
    self.num_classes = len(classes)
    self.root, self.context_key = root, context_key
    if context_key:
      missing = [p for p in self.paths if not os.path.exists(self.context_path(p))]
      if missing:
        raise FileNotFoundError(
          f"data.context_key={context_key!r}: {len(missing)} of {len(self.paths)} images have no "
          f"context array beside them, e.g. {self.context_path(missing[0])!r}."
        )

  def context_path(self, image_path: str) -> str:
    return f"{os.path.splitext(image_path)[0]}.{self.context_key}.npy"

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    return f"image {index} ({self.paths[index]})"

  def label(self, index: int) -> int:
    top = os.path.relpath(self.paths[index], self.root).split(os.sep)[0]
    return self.class_index.get(top, 0)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[index]
    with Image.open(path) as img:
      example = {"image": decode(img), "label": self.label(index)}
    if self.context_key:
      example["context"] = np.load(self.context_path(path), allow_pickle=False)
    return example


def decode(img: Image.Image) -> np.ndarray:
  """An opened image file as uint8 [H, W, 3]."""
  return np.asarray(img.convert("RGB"))


class ArrayRecordSource:
  """A split packed by `ddpm_jax.dataset_tool` (ArrayRecord shards of encoded images, labels.npy,
  contexts.npy, manifest.json) as {"image", "label"[, "context"]}: the image folder it was packed
  from, read by random access from a few large files."""

  decodes = True

  def __init__(self, split_dir: str, context_key: str = ""):
    from array_record.python import array_record_data_source

    manifest_path = os.path.join(split_dir, "manifest.json")
    if not os.path.exists(manifest_path):
      raise FileNotFoundError(
        f"No {manifest_path}: pack an image folder first (python -m ddpm_jax.dataset_tool)."
      )
    with open(manifest_path) as f:
      self.manifest = json.load(f)
    self.split_dir = split_dir
    self.records = array_record_data_source.ArrayRecordDataSource(
      [os.path.join(split_dir, name) for name in self.manifest["shards"]]
    )
    self.labels = np.load(os.path.join(split_dir, "labels.npy"))
    self.num_classes = len(self.manifest["classes"])
    self.context_key = context_key
    if context_key:
      if context_key != self.manifest["context_key"]:
        raise ValueError(
          f"data.context_key={context_key!r}, but {split_dir} was packed with the contexts "
          f"{self.manifest['context_key']!r} ('' : none)."
        )
      self.contexts = np.load(os.path.join(split_dir, "contexts.npy"), mmap_mode="r")
    if not len(self.records) == len(self.labels) == self.manifest["num_examples"]:
      raise ValueError(
        f"{split_dir}: {len(self.records)} records and {len(self.labels)} labels, but the manifest "
        f"says {self.manifest['num_examples']} examples."
      )

  def __len__(self) -> int:
    return len(self.records)

  def describe(self, index: int) -> str:
    return f"record {index} of the ArrayRecord shards in {self.split_dir}"

  def __getitem__(self, index: int) -> dict:
    with Image.open(io.BytesIO(self.records[index])) as img:
      example = {"image": decode(img), "label": int(self.labels[index])}
    if self.context_key:
      example["context"] = np.asarray(self.contexts[index])
    return example


class TfdsSource:
  """A tfds random-access source as {"image", "label"} (label 0 where the dataset has none), and
  "context" the feature `context_key` names."""

  decodes = True

  def __init__(self, data_source, context_key: str = ""):
    self.data_source, self.context_key = data_source, context_key
    features = data_source.dataset_info.features
    self.num_classes = features["label"].num_classes if "label" in features else 0
    if context_key and context_key not in features:
      raise ValueError(
        f"data.context_key={context_key!r} is not a feature of this dataset; its features: "
        f"{', '.join(features)}."
      )

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict:
    example = self.data_source[index]
    out = {"image": example["image"], "label": int(example["label"]) if self.num_classes else 0}
    if self.context_key:
      out["context"] = example[self.context_key]
    return out


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split in memory as (uint8 images [N, H, W, C], labels [N]), for small datasets
  (evaluation)."""
  source = open_source(data_config, split)
  examples = [source[i] for i in range(len(source))]
  return np.stack([e["image"] for e in examples]), np.asarray([e["label"] for e in examples])


def open_source(data_config, split: str) -> Source:
  """`get_source` of `data_config`'s dataset, data_dir and context_key."""
  return get_source(
    data_config.dataset, split, data_config.get("data_dir"), data_config.get("context_key", "")
  )


def get_source(
  dataset: str, split: str, data_dir: str | None = None, context_key: str = ""
) -> Source:
  """The random-access source of `dataset`'s `split` (with the contexts `context_key` names), or
  one error that says how to prepare it."""
  if dataset == "digits":
    if context_key:
      raise ValueError("data.dataset='digits' has no contexts; set data.context_key=''.")
    return DigitsSource(split)
  if dataset in ("image_folder", "array_record"):
    if not data_dir:
      raise ValueError(f"dataset={dataset!r} needs config.data.data_dir, the directory of images.")
    split_dir = os.path.join(data_dir, split)
    split_dir = split_dir if os.path.isdir(split_dir) else data_dir
    if dataset == "array_record":
      return ArrayRecordSource(split_dir, context_key)
    return ImageFolderSource(split_dir, context_key)
  import tensorflow_datasets as tfds

  try:
    source = tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise
  except Exception as e:
    if tfds.builder(dataset, data_dir=data_dir).is_prepared():
      raise  # prepared, and failing for another reason: that reason, as it is
    raise FileNotFoundError(
      f"tfds dataset {dataset!r} (split {split!r}) is not prepared in "
      f"{data_dir or tfds.core.constants.DATA_DIR}. "
      f"Prepare it once on a machine with network access:\n"
      f"  tfds build {dataset} --file_format=array_record --data_dir=<dir>\n"
      "then set --config.data.data_dir=<dir> (celeb_a_hq and imagenet2012 also need their manual "
      "downloads, see the tfds catalog)."
    ) from e
  return TfdsSource(source, context_key)


def _centre_crop(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  side = min(h, w)
  return image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]


def adm_centre_crop(image: np.ndarray, image_size: int) -> np.ndarray:
  """guided-diffusion's `center_crop_arr`: BOX halvings while the short side is at least twice
  `image_size`, BICUBIC to a short side of `image_size`, then the centre square."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  while min(pil.size) >= 2 * image_size:
    pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
  scale = image_size / min(pil.size)
  pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
  array = np.asarray(pil).reshape(pil.size[1], pil.size[0], -1)
  top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
  return array[top : top + image_size, left : left + image_size]


def to_model_range(
  image: np.ndarray, image_size: int, num_channels: int, resize: str = "bilinear"
) -> np.ndarray:
  """uint8 [H, W, C] -> float32 [S, S, num_channels] in [-1, 1] (`resize_uint8`)."""
  return pixels.from_uint8(resize_uint8(image, image_size, num_channels, resize))


def resize_uint8(
  image: np.ndarray, image_size: int, num_channels: int, resize: str = "bilinear"
) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [S, S, num_channels]: "bilinear" centre-crops to a square and
  resizes bilinearly; "adm" resizes as guided-diffusion (`adm_centre_crop`)."""
  if image.ndim == 2:
    image = image[..., None]
  if resize == "adm":
    image = adm_centre_crop(image, image_size)
  else:
    image = _centre_crop(image)
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
      grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      image = np.round(grey).astype(np.uint8)[..., None]
  return image


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


class CorruptExampleError(ValueError):
  """An example of the source cannot be decoded (a damaged or truncated file or record)."""


def describe(source: Source, index: int) -> str:
  """Where example `index` of `source` comes from (its file or record, where the source says)."""
  return source.describe(index) if hasattr(source, "describe") else f"example {index}"


def read_example(source: Source, index: int, skip_corrupt: bool, skipped: list[int]) -> dict:
  """Example `index`, or with `skip_corrupt` where it cannot be decoded the next one that can
  (index + 1, + 2, … mod N: the same one every time), its index appended to `skipped`."""
  for offset in range(len(source)):
    candidate = (index + offset) % len(source)
    try:
      return source[candidate]
    except Exception as error:  # noqa: BLE001  (PIL and the readers raise many kinds)
      if not skip_corrupt:
        raise CorruptExampleError(
          f"{describe(source, candidate)} cannot be decoded ({type(error).__name__}: {error}); "
          "fix or remove it, or set data.skip_corrupt=True to skip such examples."
        ) from error
      skipped.append(candidate)
  raise CorruptExampleError(f"No example of the {len(source)} can be decoded.")


def load_examples(
  source: Source,
  indices: np.ndarray,
  image_size: int,
  num_channels: int,
  resize: str,
  images: np.ndarray | None = None,
  skip_corrupt: bool = False,
) -> dict[str, np.ndarray]:
  """The examples at `indices`, decoded and resized into `images` (uint8 [n, S, S, C], new if
  None): -> {"image" (unless given), "label" [n], "skipped" (the corrupt indices `read_example`
  skipped) and where the source has them "context" [n, L, D]}."""
  out = (
    images
    if images is not None
    else np.empty((len(indices), image_size, image_size, num_channels), np.uint8)
  )
  labels, contexts, skipped = [], [], []
  for row, index in enumerate(indices):
    example = read_example(source, int(index), skip_corrupt, skipped)
    out[row] = resize_uint8(np.asarray(example["image"]), image_size, num_channels, resize)
    labels.append(int(example["label"]))
    if "context" in example:
      contexts.append(as_context(example["context"]))
  batch = {"label": np.asarray(labels, np.int32), "skipped": np.asarray(skipped, np.int64)}
  if contexts:
    batch["context"] = np.stack(contexts)
  if images is None:
    batch["image"] = out
  return batch


# A worker process's source, opened by its first task (so that a failure to open it is that task's
# error, not a broken pool), by the arguments of `get_source`.
_worker_sources: dict[tuple, Source] = {}


def _load_in_worker(
  source_args: tuple, indices, rows: slice, memory_name: str, shape, resize, skip_corrupt
):
  """Decodes `indices` into rows `rows` of the batch in shared memory `memory_name`: the images do
  not travel through a pipe (as long to pickle as to decode, for small images)."""
  if source_args not in _worker_sources:
    _worker_sources[source_args] = get_source(*source_args)
  # a spawned worker shares its parent's resource tracker: the block stays the parent's to unlink
  memory = shared_memory.SharedMemory(memory_name)
  images = np.ndarray(shape, np.uint8, memory.buf)[rows]
  try:
    source = _worker_sources[source_args]
    return load_examples(source, indices, shape[1], shape[3], resize, images, skip_corrupt)
  finally:
    del images  # the view must go before the block can close
    memory.close()


@dataclasses.dataclass
class WorkerPool:
  """`num_workers` spawned processes (not forked: the parent runs JAX's threads) that decode and
  resize batches of the source `get_source(*source_args)`, each opening its own copy (decoding
  holds Python's GIL, so threads would not run it in parallel)."""

  source_args: tuple
  num_workers: int

  def __enter__(self):
    self.executor = concurrent.futures.ProcessPoolExecutor(
      self.num_workers, mp_context=multiprocessing.get_context("spawn")
    )
    return self

  def __exit__(self, *exc):
    self.executor.shutdown(cancel_futures=True)


def worker_pool(data_config, split: str, num_workers: int) -> WorkerPool:
  return WorkerPool(
    (
      data_config.dataset,
      split,
      data_config.get("data_dir"),
      data_config.get("context_key", ""),
    ),
    num_workers,
  )


def _load_by_workers(
  pool: WorkerPool, indices, image_size: int, num_channels: int, resize: str, skip_corrupt: bool
) -> dict:
  shape = (len(indices), image_size, image_size, num_channels)
  memory = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
  try:
    bounds = np.linspace(0, len(indices), pool.num_workers + 1).astype(int)
    chunks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    futures = [
      pool.executor.submit(
        _load_in_worker,
        pool.source_args,
        indices[rows],
        rows,
        memory.name,
        shape,
        resize,
        skip_corrupt,
      )
      for rows in chunks
    ]
    parts = [future.result() for future in futures]
    batch = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    batch["image"] = np.array(np.ndarray(shape, np.uint8, memory.buf))
    return batch
  finally:
    memory.close()
    memory.unlink()


def load_batch(
  source: Source,
  positions: np.ndarray,
  *,
  seed: int,
  image_size: int,
  num_channels: int,
  random_flip: bool,
  resize: str = "bilinear",
  pool: WorkerPool | None = None,
  uint8: bool = False,
  skip_corrupt: bool = False,
) -> dict[str, np.ndarray]:
  """The examples at stream `positions` in [-1, 1] (`uint8`: as uint8, for the accelerator to
  scale), decoded and resized here or by the processes of `pool` (a `worker_pool` of the same
  source), one contiguous chunk each, in order."""
  indices = stream_indices(len(source), seed, positions)
  if pool is None:
    batch = load_examples(source, indices, image_size, num_channels, resize, None, skip_corrupt)
  else:
    batch = _load_by_workers(pool, indices, image_size, num_channels, resize, skip_corrupt)
  skipped = batch.pop("skipped")
  if len(skipped):
    logging.warning(
      "Skipped %d corrupt example(s) of this batch (data.skip_corrupt): %s.",
      len(skipped),
      "; ".join(describe(source, int(i)) for i in skipped),
    )
  # a coin per stream position; 3-word seeds keep it apart from the 2-word permutation seeds
  if random_flip:
    flip = np.array([np.random.default_rng([seed, int(p), 1]).random() < 0.5 for p in positions])
    batch["image"][flip] = batch["image"][flip, :, ::-1]
  if not uint8:
    batch["image"] = pixels.from_uint8(batch["image"])
  return batch


def as_context(array) -> np.ndarray:
  """A context as float32 [L, D] (a vector [D] is one token)."""
  array = np.asarray(array, np.float32)
  if array.ndim not in (1, 2):
    raise ValueError(f"A context is [L, D] or [D]; got shape {array.shape}.")
  return array.reshape(-1, array.shape[-1])


def context_problems(source: Source, context_dim: int | None) -> list[str]:
  """A model that cross-attends to contexts of `context_dim` needs a source that has them, of that
  width (checked on its first example)."""
  if not context_dim:
    return []
  if not source.context_key:
    return [f"model.context_dim={context_dim} needs contexts: set data.context_key."]
  width = as_context(source[0]["context"]).shape[-1]
  if width != context_dim:
    return [
      f"data.context_key={source.context_key!r} gives contexts of width {width}, but "
      f"model.context_dim={context_dim}."
    ]
  return []


def label_problems(dataset: str, dataset_classes: int, num_classes: int) -> list[str]:
  """A class-conditional model (`num_classes` > 0) needs a dataset whose labels it can embed."""
  if not num_classes:
    return []
  if not dataset_classes:
    return [
      f"model.num_classes={num_classes} trains class-conditionally, but data.dataset={dataset!r} "
      "has no labels (an image_folder needs one sub-folder per class); set model.num_classes=0 or "
      "use a labelled dataset."
    ]
  if dataset_classes > num_classes:
    return [
      f"data.dataset={dataset!r} has {dataset_classes} classes, more than "
      f"model.num_classes={num_classes}."
    ]
  return []


def batches(
  data_config,
  *,
  split: str,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  num_steps: int | None = None,
  num_classes: int = 0,
  context_dim: int | None = None,
  uint8: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches start_step, start_step + 1, … (forever unless
  `num_steps`), decoded by `data.num_workers` processes (0: in this one). The source is opened
  and checked now (labels for a model of `num_classes` > 0, contexts of `context_dim`, at least
  one global batch of examples), the batches read as they are consumed."""
  import jax  # here, not above: worker processes import this module without JAX

  process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(
      f"Batch size {global_batch_size} is not divisible by {process_count} processes."
    )
  source = open_source(data_config, split)
  problems = label_problems(data_config.dataset, source.num_classes, num_classes)
  problems += context_problems(source, context_dim)
  if problems:
    raise InvalidConfigError(" ".join(problems))
  if len(source) < global_batch_size:
    raise InvalidConfigError(
      f"data.dataset={data_config.dataset!r} split {split!r} has {len(source)} examples, fewer "
      f"than one global batch of {global_batch_size} (training.batch_size / sampling.batch_size)."
    )
  load = functools.partial(
    load_batch,
    seed=seed,
    image_size=data_config.image_size,
    num_channels=data_config.num_channels,
    random_flip=data_config.random_flip and split_name(split) == "train",
    resize=data_config.get("resize", "bilinear"),
    uint8=uint8,
    skip_corrupt=data_config.get("skip_corrupt", False),
  )

  def generate():
    workers = data_config.get("num_workers", 0) if source.decodes else 0
    with worker_pool(data_config, split, workers) if workers else nullcontext() as pool:
      step = start_step
      while num_steps is None or step < start_step + num_steps:
        positions = local_positions(step, global_batch_size, process_index, process_count)
        yield load(source, positions, pool=pool)
        step += 1

  return generate()


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
