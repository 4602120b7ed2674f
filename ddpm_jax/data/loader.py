"""Batches for training and evaluation: this process's rows of each global batch, in the
deterministic order (`order`), read by `workers`, prefetched in a background thread. The only part
of the data package that imports JAX (inside `batches`, so that worker processes never do)."""

from __future__ import annotations

from contextlib import nullcontext
import functools
import queue
import threading
from typing import Iterator

import numpy as np

from ddpm_jax.data import sources
from ddpm_jax.data.order import local_positions
from ddpm_jax.data.workers import start_batch, worker_pool
from ddpm_jax.runtime.errors import InvalidConfigError


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
  embedding_dim: int | None = None,
  uint8: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches start_step, start_step + 1, … (forever unless
  `num_steps`), decoded by `data.num_workers` processes (0: in this one). The source is opened
  and checked now (labels for a model of `num_classes` > 0, contexts of `context_dim`, embeddings
  of `embedding_dim`, at least one global batch of examples), the batches read as they are
  consumed."""
  import jax  # here, not above: worker processes import this module without JAX

  process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(
      f"Batch size {global_batch_size} is not divisible by {process_count} processes."
    )
  source = sources.open_source(data_config, split)
  problems = sources.label_problems(data_config.dataset, source.num_classes, num_classes)
  problems += sources.array_problems(source, "context", context_dim)
  problems += sources.array_problems(source, "embedding", embedding_dim)
  problems += sources.image_array_problems(source, data_config)
  if problems:
    raise InvalidConfigError(" ".join(problems))
  if len(source) < global_batch_size:
    raise InvalidConfigError(
      f"data.dataset={data_config.dataset!r} split {split!r} has {len(source)} examples, fewer "
      f"than one global batch of {global_batch_size} (training.batch_size / sampling.batch_size)."
    )
  start = functools.partial(
    start_batch,
    seed=seed,
    image_size=data_config.image_size,
    num_channels=data_config.num_channels,
    random_flip=data_config.random_flip and sources.split_name(split) == "train",
    resize=data_config.get("resize", "bilinear"),
    uint8=uint8,
    skip_corrupt=data_config.get("skip_corrupt", False),
  )

  def generate():
    workers = data_config.num_workers if source.decodes else 0
    with worker_pool(data_config, split, workers) if workers else nullcontext() as pool:
      pending, step = None, start_step
      try:
        while num_steps is None or step < start_step + num_steps:
          positions = local_positions(step, global_batch_size, process_index, process_count)
          # batch s + 1 goes to the workers before batch s is waited for: they never idle
          ready, pending = pending, start(source, positions, pool=pool)
          if ready is not None:
            yield ready.result()
          step += 1
        if pending is not None:
          ready, pending = pending, None
          yield ready.result()
      finally:
        if pending is not None:  # the consumer stopped early
          pending.release()

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
