"""Writes a split once into ArrayRecord shards that `data.dataset="array_record"` (an image
folder's encoded files) or `data.dataset="latents"` (an autoencoder's posteriors,
`jobs.latent.encode_dataset`) reads by random access (EDM's dataset_tool.py is the model);
`python -m ddpm_jax.dataset_tool` runs them.

OUT/<split>/ gets data-<i>-of-<n>.array_record, labels.npy, <field>s.npy of each array packed
(contexts.npy where --context_key packs the sidecar arrays <stem>.<KEY>.npy, embeddings.npy
--embedding_key's) and manifest.json (the example count, classes, shards, each array's key and
shape, and what the writer adds). Record i of the concatenated shards is example i of the source
(an image folder's sorted image path i, as `sources.ImageFolderSource` orders them).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from absl import logging
import numpy as np

from ddpm_jax.data import sources

MANIFEST = "manifest.json"


def shard_names(num_shards: int) -> list[str]:
  return [f"data-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def write_split(
  split_dir: str,
  examples: Iterable[tuple[bytes, int, dict[str, np.ndarray]]],
  num_examples: int,
  num_shards: int,
  manifest: dict,
) -> str:
  """Writes `num_examples` (record, label, {field: array}) in order into `num_shards` contiguous
  shards of about equal size, the labels, the arrays and `manifest` (with the count and shards
  added) into `split_dir`; -> split_dir."""
  from array_record.python import array_record_module

  num_shards = max(1, min(num_shards, num_examples))
  os.makedirs(split_dir, exist_ok=True)
  names = shard_names(num_shards)
  bounds = [num_examples * s // num_shards for s in range(num_shards + 1)]
  examples = iter(examples)
  labels, arrays = [], {}
  for shard, name in enumerate(names):
    writer = array_record_module.ArrayRecordWriter(os.path.join(split_dir, name), "group_size:1")
    for _ in range(bounds[shard], bounds[shard + 1]):
      record, label, example_arrays = next(examples)
      writer.write(record)
      labels.append(label)
      for field, array in example_arrays.items():
        arrays.setdefault(field, []).append(array)
    writer.close()
    logging.info("Wrote %d / %d examples into %s.", bounds[shard + 1], num_examples, split_dir)
  np.save(os.path.join(split_dir, "labels.npy"), np.asarray(labels, np.int32))
  manifest = {"num_examples": num_examples, "shards": names, **manifest}
  for field, rows in arrays.items():
    shapes = {row.shape for row in rows}
    if len(shapes) > 1:
      raise ValueError(f"The {field}s have different shapes {sorted(shapes)}: pad them to one.")
    np.save(os.path.join(split_dir, f"{field}s.npy"), np.stack(rows))
    manifest[f"{field}_shape"] = list(rows[0].shape)
  with open(os.path.join(split_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return split_dir


def pack_image_folder(
  source: str,
  out: str,
  split: str = "train",
  num_shards: int = 8,
  context_key: str = "",
  embedding_key: str = "",
) -> str:
  """Packs the images under `source` (its `split` sub-folder where it has one) into out/<split> as
  their files' encoded bytes (decoded and resized when read, as an image folder's); -> that
  directory."""
  folder = sources.get_source("image_folder", split, source, context_key, embedding_key)

  def examples():
    for index, path in enumerate(folder.paths):
      with open(path, "rb") as f:
        record = f.read()
      arrays = {
        field: sources.AS_ARRAY[field](np.load(folder.array_path(path, field)))
        for field in folder.array_keys
      }
      yield record, folder.label(index), arrays

  manifest = {
    "classes": sorted(folder.class_index, key=folder.class_index.get),
    "context_key": context_key,
    "embedding_key": embedding_key,
  }
  return write_split(os.path.join(out, split), examples(), len(folder), num_shards, manifest)
