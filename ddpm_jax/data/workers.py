"""Reading a batch's examples: in this process, or decoded and resized by `data.num_workers`
spawned processes into shared memory, in the order's positions; corrupt examples named or skipped.
No JAX: the worker processes import this module."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
from multiprocessing import shared_memory

from absl import logging
import numpy as np

from ddpm_jax import pixels
from ddpm_jax.data.order import stream_indices
from ddpm_jax.data.sources import AS_ARRAY, Source, array_keys, get_source, open_source
from ddpm_jax.data.transforms import resize_uint8


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
  skipped) and the arrays the source has: "context" [n, L, D], "embedding" [n, D]}."""
  out = images
  if out is None and source.has_images:
    out = np.empty((len(indices), image_size, image_size, num_channels), np.uint8)
  labels, skipped = [], []
  arrays = {field: [] for field in source.array_keys}
  for row, index in enumerate(indices):
    example = read_example(source, int(index), skip_corrupt, skipped)
    if source.has_images:
      out[row] = resize_uint8(np.asarray(example["image"]), image_size, num_channels, resize)
    labels.append(int(example["label"]))
    for field, rows in arrays.items():
      rows.append(AS_ARRAY[field](example[field]))
  batch = {"label": np.asarray(labels, np.int32), "skipped": np.asarray(skipped, np.int64)}
  batch.update({field: np.stack(rows) for field, rows in arrays.items() if rows})
  if images is None and out is not None:
    batch["image"] = out
  return batch


def split_images(data_config, split: str, count: int | None = None):
  """The first `count` (None: all) examples of `split` at the data's size: (uint8 images [n, S, S,
  C], labels [n])."""
  source = open_source(data_config, split)
  indices = np.arange(len(source) if count is None else min(count, len(source)))
  examples = load_examples(
    source, indices, data_config.image_size, data_config.num_channels, data_config.resize
  )
  images = examples["image"]  # a reflow's float pairs: as the images they stand for
  return (images if source.has_images else pixels.to_uint8(images)), examples["label"]


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
      *(array_keys(data_config).get(field, "") for field in ("context", "embedding")),
    ),
    num_workers,
  )


class WorkerBatch:
  """A batch the processes of `pool` are decoding into shared memory (one contiguous chunk each):
  `result()` waits for it, `release()` frees it unread."""

  def __init__(
    self, pool: WorkerPool, indices, image_size: int, num_channels: int, resize, skip_corrupt
  ):
    self.shape = (len(indices), image_size, image_size, num_channels)
    self.memory = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(self.shape))))
    bounds = np.linspace(0, len(indices), pool.num_workers + 1).astype(int)
    chunks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    self.futures = [
      pool.executor.submit(
        _load_in_worker,
        pool.source_args,
        indices[rows],
        rows,
        self.memory.name,
        self.shape,
        resize,
        skip_corrupt,
      )
      for rows in chunks
    ]

  def result(self) -> dict:
    try:
      parts = [future.result() for future in self.futures]
      batch = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
      batch["image"] = np.array(np.ndarray(self.shape, np.uint8, self.memory.buf))
      return batch
    finally:
      self.release()

  def release(self) -> None:
    for future in self.futures:
      future.cancel()
    concurrent.futures.wait(self.futures)  # no worker writes into the block once it is gone
    self.memory.close()
    self.memory.unlink()


@dataclasses.dataclass
class PendingBatch:
  """The examples at stream `positions` being read: `result()` -> the batch (`load_batch`'s),
  `release()` -> dropped unread."""

  source: Source
  positions: np.ndarray
  seed: int
  random_flip: bool
  uint8: bool
  read: WorkerBatch | functools.partial

  def result(self) -> dict[str, np.ndarray]:
    batch = self.read.result() if isinstance(self.read, WorkerBatch) else self.read()
    skipped = batch.pop("skipped")
    if len(skipped):
      logging.warning(
        "Skipped %d corrupt example(s) of this batch (data.skip_corrupt): %s.",
        len(skipped),
        "; ".join(describe(self.source, int(i)) for i in skipped),
      )
    if "latent" in batch:  # cached posteriors [n, 2, 2, h, w, c]: the mirror image's where flipped
      batch["latent"] = batch["latent"][np.arange(len(self.positions)), self.flips().astype(int)]
    if not self.source.has_images:  # arrays as they are (data.dataset="embeddings", "reflow", …)
      return batch
    flip = self.flips()
    batch["image"][flip] = batch["image"][flip, :, ::-1]
    if not self.uint8:
      batch["image"] = pixels.from_uint8(batch["image"])
    return batch

  def flips(self) -> np.ndarray:
    """Whether each example is mirrored (bool [n]): a coin per stream position under random_flip;
    3-word seeds keep it apart from the 2-word permutation seeds."""
    if not self.random_flip:
      return np.zeros(len(self.positions), bool)
    return np.array(
      [np.random.default_rng([self.seed, int(p), 1]).random() < 0.5 for p in self.positions]
    )

  def release(self) -> None:
    if isinstance(self.read, WorkerBatch):
      self.read.release()


def start_batch(
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
) -> PendingBatch:
  """Starts reading the examples at stream `positions`: handed to the processes of `pool` (a
  `worker_pool` of the same source) now, so that the caller can start the next batch before
  waiting for this one; read in this process by `result()` without a pool."""
  indices = stream_indices(len(source), seed, positions)
  if pool is None:
    read = functools.partial(
      load_examples, source, indices, image_size, num_channels, resize, None, skip_corrupt
    )
  else:
    read = WorkerBatch(pool, indices, image_size, num_channels, resize, skip_corrupt)
  return PendingBatch(source, positions, seed, random_flip, uint8, read)


def load_batch(source: Source, positions: np.ndarray, **options) -> dict[str, np.ndarray]:
  """The examples at stream `positions` in [-1, 1] (`uint8`: as uint8, for the accelerator to
  scale), decoded and resized here or by the processes of `pool`, in order (`start_batch`'s
  options)."""
  return start_batch(source, positions, **options).result()
