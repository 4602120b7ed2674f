"""Input throughput: images/s the input pipeline decodes, resizes and flips, at 32², 64² and 256²,
with 1 and N worker threads, from an image folder and from its ArrayRecord packing.

  python -m benchmarks.input_throughput [--workers=1,2,8] [--num_images=256] [--batch_size=64]

A last row times the order alone at ImageNet's 1.28 M examples (`order.stream_indices` of each
batch's positions, uncached against the cached epoch permutation), in ms per batch.

Each resolution has source images like its datasets': 32×32 PNGs (CIFAR-10, no resize), 80×64
JPEGs with ADM's resize to 64 (downsampled ImageNet-like), 341×256 JPEGs centre-cropped and resized
bilinearly to 256 (LSUN-like). Each row reads the same global batches of `loader.batches`
(the (seed, step) order) after one warm-up batch.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import ml_collections
import numpy as np
from PIL import Image

from ddpm_jax.data import dataset_tool, loader, order

# resolution -> (source width, height, file format, data.resize)
SETUPS = {
  32: (32, 32, "png", "bilinear"),
  64: (80, 64, "jpeg", "adm"),
  256: (341, 256, "jpeg", "bilinear"),
}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown CPU"


def write_images(root: str, num_images: int, width: int, height: int, fmt: str) -> None:
  rng = np.random.default_rng(0)
  # smooth images (noise compresses unlike photographs): random low-frequency colour fields
  base = rng.integers(0, 256, (num_images, 4, 4, 3), dtype=np.uint8)
  for i in range(num_images):
    image = Image.fromarray(base[i]).resize((width, height), Image.BICUBIC)
    image.save(f"{root}/{i:05d}.{fmt}", quality=90) if fmt == "jpeg" else image.save(
      f"{root}/{i:05d}.{fmt}"
    )


def images_per_second(data, batch_size: int, num_batches: int) -> float:
  stream = loader.batches(  # uint8, as training reads them (scaled on the accelerator)
    data, split="train", global_batch_size=batch_size, seed=0, num_steps=num_batches + 1, uint8=True
  )
  next(stream)  # warm-up: opening the files, starting the threads
  start = time.perf_counter()
  for _ in stream:
    pass
  return batch_size * num_batches / (time.perf_counter() - start)


IMAGENET_EXAMPLES = 1_281_167


def order_ms_per_batch(batch_size: int, num_batches: int) -> tuple[float, float]:
  """(uncached, cached) milliseconds of `order.stream_indices` per batch at ImageNet's size."""
  positions = [np.arange(s * batch_size, (s + 1) * batch_size) for s in range(num_batches)]
  timings = []
  for cached in (False, True):
    order.epoch_permutation.cache_clear()
    start = time.perf_counter()
    for batch in positions:
      if not cached:
        order.epoch_permutation.cache_clear()
      order.stream_indices(IMAGENET_EXAMPLES, 0, batch)
    timings.append(1e3 * (time.perf_counter() - start) / num_batches)
  return timings[0], timings[1]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workers", default="1,2,8")
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_batches", type=int, default=8)
  args = parser.parse_args()
  workers = [int(w) for w in args.workers.split(",")]
  import os

  print(f"machine: {cpu_model()}, {os.cpu_count()} cores; batch {args.batch_size}")
  print(f"{'size':>5} {'source':>13} " + " ".join(f"{f'{w} workers':>11}" for w in workers))
  for size, (width, height, fmt, resize) in SETUPS.items():
    with tempfile.TemporaryDirectory() as tmp:
      write_images(tmp, args.num_images, width, height, fmt)
      packed = f"{tmp}/packed"
      dataset_tool.pack_image_folder(tmp, packed, num_shards=4)
      for dataset, data_dir in (("image_folder", tmp), ("array_record", packed)):
        rates = []
        for num_workers in workers:
          data = ml_collections.ConfigDict(
            dict(
              dataset=dataset,
              data_dir=data_dir,
              image_size=size,
              num_channels=3,
              random_flip=True,
              resize=resize,
              num_workers=num_workers,
            )
          )
          rates.append(images_per_second(data, args.batch_size, args.num_batches))
        ratio = f"  ({rates[-1] / rates[0]:.2f}× with {workers[-1]})"
        print(f"{size:>5} {dataset:>13} " + " ".join(f"{r:>11.0f}" for r in rates) + ratio)
  uncached, cached = order_ms_per_batch(args.batch_size, args.num_batches)
  print(
    f"order at {IMAGENET_EXAMPLES:,} examples (index only): {uncached:.1f} ms per batch "
    f"recomputing the epoch's permutation, {cached:.3f} ms cached ({uncached / cached:.0f}×)"
  )
  print("images/s; a train step of batch B at S steps/s needs B·S images/s per host")


if __name__ == "__main__":
  main()
