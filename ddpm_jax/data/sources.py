"""Datasets as random-access sources of `{"image": uint8 [H, W, C], "label": int}` (and the arrays
`"context": float32 [L, D]` where `data.context_key` names one, `"embedding": float32 [D]` where
`data.embedding_key` does), each described before it is opened by `DATASETS` (splits, classes, the
held-out split):
  - tfds datasets through `tfds.data_source` (ArrayRecord files; no TensorFlow needed to read them):
    cifar10, celeb_a_hq/256, lsun/<category>, imagenet2012, imagenet_resized/64x64, mnist, …
  - "digits": the 8×8 handwritten digits that ship inside scikit-learn (offline; used by
    configs/default.py);
  - "image_folder": every image file under `data.data_dir` (labels from sub-directory names; the
    context of `a/b.png` is the sidecar array `a/b.<context_key>.npy`, its embedding
    `a/b.<embedding_key>.npy`);
  - "array_record": an image folder packed into ArrayRecord shards by `ddpm_jax.dataset_tool`;
  - "latents": any of these encoded once by an autoencoder (`dataset_tool --encode_with`), as
    {"latent": float32 [2 (image, mirror image), 2 (mean, logvar), h, w, c], "label"}.
An array key ending in ".npz" names a file of any dataset's arrays aligned with the split's examples
(row i: example i; "{split}" in it becomes the split): its array of the field's name ("embedding"),
e.g. the codes `--mode=represent` writes for a split.

No JAX here: the decoding worker processes import this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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
  # vectors, not images: an .npz (data.path) of "embedding" [N, D] with "label" [N] and/or
  # "caption_embedding" [N, L, Dc], the diffusion prior's pairs; its last 5 % held out
  "embeddings": DatasetSpec(("train",), -1, "train[95%:]", "train[:95%]"),
  # a dataset encoded once by an autoencoder (dataset_tool --encode_with): the posteriors of each
  # image and of its mirror image in ArrayRecord shards, data.data_dir as for "array_record"
  "latents": DatasetSpec(("train", "test", "validation"), -1, "test"),
  # a flow's ODE pairs (--mode=reflow): an .npz (data.path) of float "image" and "noise"
  # [N, H, W, C] in [-1, 1] and N(0, I), with "label" [N]; a 2-rectified flow trains on them
  "reflow": DatasetSpec(("train",), -1, "train[95%:]", "train[:95%]"),
}


def dataset_spec(dataset: str) -> DatasetSpec | None:
  """The spec of `dataset` (a tfds name may carry a /config: lsun/church_outdoor)."""
  return DATASETS.get(dataset.split("/")[0])


def split_name(split: str) -> str:
  """ "train[:95%]" -> "train"."""
  return split.split("[")[0]


# The arrays an example may carry besides image and label, each named by data.<field>_key:
# "context" [L, D] (cross-attention), "embedding" [D] (an embedding-conditioned decoder).
ARRAY_FIELDS = ("context", "embedding")


def array_keys(data_config) -> dict[str, str]:
  """{field: the data's key for it} of the arrays `data_config` asks for."""
  keys = {field: data_config.get(f"{field}_key", "") for field in ARRAY_FIELDS}
  return {field: key for field, key in keys.items() if key}


def in_file(key: str) -> bool:
  """Whether an array key names an index-aligned .npz file rather than a feature or sidecar."""
  return key.endswith(".npz")


class Source(Protocol):
  num_classes: int  # 0: no labels
  array_keys: dict[str, str]  # {field: key} of the arrays its examples carry
  has_images: bool  # False: its examples are arrays and a label only (data.dataset="embeddings")
  decodes: bool  # whether reading an example decodes a file (worth data.num_workers processes)

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits -> (images [1797, 8, 8] in 0..16 as float64, labels [1797]), read from
  the file sklearn.datasets.load_digits reads, without importing scikit-learn (a second of every
  start-up)."""
  sklearn = importlib.util.find_spec("sklearn")  # finds the package without running it
  if sklearn is None:
    raise ModuleNotFoundError("The digits dataset is scikit-learn's: pip install scikit-learn.")
  path = os.path.join(sklearn.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  table = np.loadtxt(path, delimiter=",")  # each row: 64 pixels, then the label
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


class DigitsSource:
  """scikit-learn's 1,797 8×8 digits (values 0–16) as uint8 images; the last 297 are the test
  split."""

  NUM_TRAIN = 1500
  num_classes = 10
  array_keys: dict[str, str] = {}
  decodes = False
  has_images = True

  def __init__(self, split: str):
    digits, labels = load_digits()
    images = np.round(digits * (255.0 / 16.0)).astype(np.uint8)[..., None]
    rows = slice(None, self.NUM_TRAIN) if split == "train" else slice(self.NUM_TRAIN, None)
    self.images, self.labels = images[rows], labels[rows]

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": int(self.labels[index])}


class ImageFolderSource:
  """All images under `root` (sorted paths); the label is the index of the first-level
  sub-directory, and a folder without sub-directories has no labels. With `array_keys` {field:
  key}, the field of image `stem.png` is the array in `stem.<key>.npy` beside it."""

  decodes = True
  has_images = True

  def __init__(self, root: str, array_keys: dict[str, str] | None = None):
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
    self.root, self.array_keys = root, dict(array_keys or {})
    for field, key in self.array_keys.items():
      missing = [p for p in self.paths if not os.path.exists(self.array_path(p, field))]
      if missing:
        raise FileNotFoundError(
          f"data.{field}_key={key!r}: {len(missing)} of {len(self.paths)} images have no "
          f"{field} array beside them, e.g. {self.array_path(missing[0], field)!r}."
        )

  def array_path(self, image_path: str, field: str) -> str:
    """The sidecar file of `field` beside the image: <stem>.<key>.npy."""
    return f"{os.path.splitext(image_path)[0]}.{self.array_keys[field]}.npy"

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
    for field in self.array_keys:
      example[field] = np.load(self.array_path(path, field), allow_pickle=False)
    return example


def decode(img: Image.Image) -> np.ndarray:
  """An opened image file as uint8 [H, W, 3]."""
  return np.asarray(img.convert("RGB"))


class ArrayRecordSource:
  """A split packed by `ddpm_jax.dataset_tool` (ArrayRecord shards of encoded images, labels.npy,
  <field>s.npy of each array packed, manifest.json) as {"image", "label"[, "context",
  "embedding"]}: the image folder it was packed from, read by random access from a few large
  files."""

  decodes = True
  has_images = True

  def __init__(self, split_dir: str, array_keys: dict[str, str] | None = None):
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
    self.array_keys, self.arrays = dict(array_keys or {}), {}
    for field, key in self.array_keys.items():
      packed = self.manifest.get(f"{field}_key", "")
      if key != packed:
        raise ValueError(
          f"data.{field}_key={key!r}, but {split_dir} was packed with the {field}s "
          f"{packed!r} ('' : none)."
        )
      self.arrays[field] = np.load(os.path.join(split_dir, f"{field}s.npy"), mmap_mode="r")
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
      return self.with_arrays(index, {"image": decode(img)})

  def with_arrays(self, index: int, example: dict) -> dict:
    """`example` (record `index`'s) with its label and the arrays packed beside the records."""
    arrays = {field: np.asarray(arrays[index]) for field, arrays in self.arrays.items()}
    return {**example, "label": int(self.labels[index]), **arrays}


class LatentRecordSource(ArrayRecordSource):
  """A split encoded by `dataset_tool --encode_with` (records of an autoencoder's raw posteriors,
  manifest["latent_shape"] [2, 2, h, w, c] of manifest["latent_dtype"]) as {"latent" float32,
  "label"[, "context", "embedding"]}; the loader picks the mirror image's posterior where a random
  flip would mirror the image (`workers.PendingBatch`)."""

  decodes = False  # a record is read, not decoded: no worker processes
  has_images = False

  def __init__(self, split_dir: str, array_keys: dict[str, str] | None = None):
    super().__init__(split_dir, array_keys)
    if "latent_shape" not in self.manifest:
      raise ValueError(
        f"{split_dir} holds packed images, not latents: read it with data.dataset='array_record', "
        "or encode a dataset with python -m ddpm_jax.dataset_tool --encode_with=WORKDIR."
      )
    self.shape = tuple(self.manifest["latent_shape"])
    self.dtype = np.dtype(self.manifest["latent_dtype"])
    self.array_keys["latent"] = "latent"

  def __getitem__(self, index: int) -> dict:
    latent = np.frombuffer(self.records[index], self.dtype).reshape(self.shape)
    return self.with_arrays(index, {"latent": latent.astype(np.float32)})


class TfdsSource:
  """A tfds random-access source as {"image", "label"} (label 0 where the dataset has none), and
  each field of `array_keys` {field: feature} the feature it names."""

  decodes = True
  has_images = True

  def __init__(self, data_source, array_keys: dict[str, str] | None = None):
    self.data_source, self.array_keys = data_source, dict(array_keys or {})
    features = data_source.dataset_info.features
    self.num_classes = features["label"].num_classes if "label" in features else 0
    for field, key in self.array_keys.items():
      if key not in features:
        raise ValueError(
          f"data.{field}_key={key!r} is not a feature of this dataset; its features: "
          f"{', '.join(features)}."
        )

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict:
    example = self.data_source[index]
    out = {"image": example["image"], "label": int(example["label"]) if self.num_classes else 0}
    for field, key in self.array_keys.items():
      out[field] = example[key]
    return out


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split in memory as (uint8 images [N, H, W, C], labels [N]), for small datasets
  (evaluation)."""
  source = open_source(data_config, split)
  examples = [source[i] for i in range(len(source))]
  return np.stack([e["image"] for e in examples]), np.asarray([e["label"] for e in examples])


def open_source(data_config, split: str) -> Source:
  """`get_source` of `data_config`'s dataset, data_dir and array keys (data.dataset="embeddings":
  the `EmbeddingsSource` of data.path)."""
  if data_config.dataset in ROWS_SOURCES:
    return ROWS_SOURCES[data_config.dataset](data_config.get("path"), split)
  keys = array_keys(data_config)
  return get_source(
    data_config.dataset,
    split,
    data_config.get("data_dir"),
    keys.get("context", ""),
    keys.get("embedding", ""),
  )


def get_source(
  dataset: str,
  split: str,
  data_dir: str | None = None,
  context_key: str = "",
  embedding_key: str = "",
) -> Source:
  """The random-access source of `dataset`'s `split` with the contexts `context_key` and the
  embeddings `embedding_key` name (.npz: a file aligned with the split, `IndexedArrays`), or one
  error that says how to prepare it."""
  keys = {"context": context_key, "embedding": embedding_key}
  native = {field: key for field, key in keys.items() if key and not in_file(key)}
  source = native_source(dataset, split, data_dir, native)
  files = {field: key.replace("{split}", split) for field, key in keys.items() if in_file(key)}
  return IndexedArrays(source, files) if files else source


def native_source(dataset: str, split: str, data_dir: str | None, keys: dict[str, str]) -> Source:
  """The source of `dataset` with the arrays `keys` {field: key} it stores itself."""
  if dataset in ROWS_SOURCES:
    raise ValueError(f"data.dataset={dataset!r} is read from data.path (`open_source`).")
  if dataset == "digits":
    if keys:
      raise ValueError(
        f"data.dataset='digits' stores no arrays besides image and label; data.{next(iter(keys))}"
        "_key can name an .npz file aligned with the split (e.g. --mode=represent's codes)."
      )
    return DigitsSource(split)
  if dataset in ("image_folder", "array_record", "latents"):
    if not data_dir:
      raise ValueError(f"dataset={dataset!r} needs config.data.data_dir, the directory of images.")
    split_dir = os.path.join(data_dir, split)
    split_dir = split_dir if os.path.isdir(split_dir) else data_dir
    if dataset in PACKED_SOURCES:
      return PACKED_SOURCES[dataset](split_dir, keys)
    return ImageFolderSource(split_dir, keys)
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
  return TfdsSource(source, keys)


class RowsSource:
  """The rows of an .npz (data.path) of arrays as examples {field: row, "label"} (label 0 without
  labels, classes: max label + 1). `split` is "train", or a slice of it in percent
  ("train[:95%]"). A subclass names its dataset, the arrays it must have with their ranks
  (REQUIRED) and those it may have (OPTIONAL), and what writes such a file (WRITER)."""

  decodes = False
  has_images = False
  DATASET: str
  REQUIRED: dict[str, int]
  OPTIONAL: tuple[str, ...] = ()
  WRITER: str

  def __init__(self, path: str | None, split: str):
    if not path:
      raise ValueError(f"data.dataset={self.DATASET!r} reads data.path, an .npz: set it.")
    if not os.path.exists(path):
      raise FileNotFoundError(f"data.path={path!r} does not exist.")
    with np.load(path, allow_pickle=False) as npz:
      missing = [name for name in self.REQUIRED if name not in npz]
      if missing:
        raise ValueError(
          f"{path} has no array {', '.join(map(repr, missing))}; it has {', '.join(npz.files)} "
          f"({self.WRITER} writes one)."
        )
      names = ("label", *self.REQUIRED, *self.OPTIONAL)
      arrays = {name: np.asarray(npz[name]) for name in names if name in npz}
    for name, rank in self.REQUIRED.items():
      if arrays[name].ndim != rank:
        raise ValueError(f"{path}: {name!r} must have {rank} axes; got {arrays[name].shape}.")
    count = len(arrays[next(iter(self.REQUIRED))])
    rows = split_rows(split, count, self.DATASET)
    labels = arrays.pop("label", None)
    self.labels = np.zeros(count, np.int32) if labels is None else labels.astype(np.int32)
    self.num_classes = 0 if labels is None else int(labels.max()) + 1
    self.labels = self.labels[rows]
    self.arrays = {name: array[rows].astype(np.float32) for name, array in arrays.items()}
    self.array_keys = {name: name for name in self.arrays}

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    example = {name: array[index] for name, array in self.arrays.items()}
    return {**example, "label": int(self.labels[index])}


class EmbeddingsSource(RowsSource):
  """Vectors {"embedding" [D], "label", "caption_embedding" [L, Dc]}: the pairs (condition,
  embedding) a diffusion prior learns."""

  DATASET = "embeddings"
  REQUIRED = {"embedding": 2}
  OPTIONAL = ("caption_embedding",)
  WRITER = "--mode=represent"


class ReflowSource(RowsSource):
  """A flow's ODE pairs {"image" [H, W, C] in [-1, 1], "noise" [H, W, C], "label"}: the coupling a
  2-rectified flow trains on (Liu et al. 2023)."""

  DATASET = "reflow"
  REQUIRED = {"image": 4, "noise": 4}
  WRITER = "--mode=reflow of a flow run"


# datasets packed by ddpm_jax.dataset_tool into data.data_dir/<split>
PACKED_SOURCES = {"array_record": ArrayRecordSource, "latents": LatentRecordSource}

# datasets read from data.path, an .npz of rows
ROWS_SOURCES = {"embeddings": EmbeddingsSource, "reflow": ReflowSource}


def split_rows(split: str, count: int, dataset: str = "embeddings") -> slice:
  """The rows of "train" or "train[a%:b%]" (either bound may be left out) among `count`."""
  name, _, spec = split.partition("[")
  if name != "train":
    raise ValueError(f"data.dataset={dataset!r} has the split 'train' (or a slice); got {split!r}.")
  if not spec:
    return slice(None)
  start, _, stop = spec.rstrip("]").partition(":")
  bound = lambda text, default: (
    default if not text else round(count * float(text.rstrip("%")) / 100)
  )
  return slice(bound(start, 0), bound(stop, count))


class IndexedArrays:
  """`source`'s examples, each with row i of the arrays in .npz files `files` {field: path} (the
  array of the field's name: "embedding" [N, D], "context" [N, L, D]), one row per example."""

  def __init__(self, source: Source, files: dict[str, str]):
    self.source, self.arrays = source, {}
    for field, path in files.items():
      if not os.path.exists(path):
        raise FileNotFoundError(f"data.{field}_key names {path!r}, which does not exist.")
      with np.load(path, allow_pickle=False) as npz:
        if field not in npz:
          raise ValueError(
            f"{path} (data.{field}_key) has no array {field!r}; it has {', '.join(npz.files)}."
          )
        self.arrays[field] = np.asarray(npz[field], np.float32)
      if len(self.arrays[field]) != len(source):
        raise ValueError(
          f"{path} (data.{field}_key) has {len(self.arrays[field])} rows, but the split has "
          f"{len(source)} examples: it must have one per example, in the split's order."
        )
    self.array_keys = {**source.array_keys, **files}
    self.num_classes, self.decodes = source.num_classes, source.decodes
    self.has_images = source.has_images

  def __len__(self) -> int:
    return len(self.source)

  def __getattr__(self, name):  # describe, label, paths, … of the source it extends
    return getattr(self.source, name)

  def __getitem__(self, index: int) -> dict:
    example = self.source[index]
    for field, arrays in self.arrays.items():
      example[field] = arrays[index]
    return example


def as_context(array) -> np.ndarray:
  """A context as float32 [L, D] (a vector [D] is one token)."""
  array = np.asarray(array, np.float32)
  if array.ndim not in (1, 2):
    raise ValueError(f"A context is [L, D] or [D]; got shape {array.shape}.")
  return array.reshape(-1, array.shape[-1])


def as_embedding(array) -> np.ndarray:
  """An embedding as float32 [D]."""
  array = np.asarray(array, np.float32)
  if array.ndim != 1:
    raise ValueError(f"An embedding is a vector [D]; got shape {array.shape}.")
  return array


# field -> its example's array in the batch's form
AS_ARRAY = {
  "context": as_context,
  "embedding": as_embedding,
  "caption_embedding": as_context,
  "image": lambda array: np.asarray(array, np.float32),  # data.dataset="reflow"'s, in [-1, 1]
  "noise": lambda array: np.asarray(array, np.float32),
  "latent": lambda array: np.asarray(array, np.float32),  # data.dataset="latents"'s posteriors
}


def image_array_problems(source: Source, data_config) -> list[str]:
  """A source of float image arrays (data.dataset="reflow") holds images of the data's size."""
  if source.has_images or "image" not in source.array_keys:
    return []
  want = (data_config.image_size, data_config.image_size, data_config.num_channels)
  got = tuple(np.shape(source[0]["image"]))
  if got != want:
    return [
      f"data.path={data_config.path!r} holds images of shape {got}, but data.image_size and "
      f"data.num_channels say {want}."
    ]
  return []


def array_problems(source: Source, field: str, width: int | None) -> list[str]:
  """A model that takes the arrays `field` of `width` (model.<field>_dim; None/0: none) needs a
  source that has them, of that width (checked on its first example)."""
  if not width:
    return []
  key = source.array_keys.get(field)
  if not key:
    return [f"model.{field}_dim={width} needs {field}s: set data.{field}_key."]
  got = AS_ARRAY[field](source[0][field]).shape[-1]
  if got != width:
    return [
      f"data.{field}_key={key!r} gives {field}s of width {got}, but model.{field}_dim={width}."
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
