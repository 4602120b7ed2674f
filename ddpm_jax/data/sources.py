"""Datasets as random-access sources of `{"image": uint8 [H, W, C], "label": int}` (and
`"context": float32 [L, D]` where `data.context_key` names one), each described before it is opened
by `DATASETS` (splits, classes, the held-out split):
  - tfds datasets through `tfds.data_source` (ArrayRecord files; no TensorFlow needed to read them):
    cifar10, celeb_a_hq/256, lsun/<category>, imagenet2012, imagenet_resized/64x64, mnist, …
  - "digits": the 8×8 handwritten digits that ship inside scikit-learn (offline; used by
    configs/default.py);
  - "image_folder": every image file under `data.data_dir` (labels from sub-directory names; the
    context of `a/b.png` is the sidecar array `a/b.<context_key>.npy`);
  - "array_record": an image folder packed into ArrayRecord shards by `ddpm_jax.dataset_tool`.

No JAX here: the decoding worker processes import this module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Protocol

import numpy as np
from PIL import Image

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
