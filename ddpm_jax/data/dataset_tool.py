"""Packs an image folder once into ArrayRecord shards that `data.dataset="array_record"` reads by
random access (EDM's dataset_tool.py is the model):

  python -m ddpm_jax.dataset_tool --source=DIR --out=DIR [--split=train] [--num_shards=8]
      [--context_key=KEY] [--embedding_key=KEY]

The images are stored as their files' encoded bytes (decoded and resized when read, as an image
folder's); OUT/<split>/ gets data-<i>-of-<n>.array_record, labels.npy (the class sub-folders'
indices), contexts.npy where --context_key packs the sidecar arrays <stem>.<KEY>.npy (and
embeddings.npy, --embedding_key's), and manifest.json (the example count, classes, shards, each
array's key and shape). Record i of the
concatenated shards is sorted image path i, as `sources.ImageFolderSource` orders them.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging
import numpy as np

from ddpm_jax.data import sources

MANIFEST = "manifest.json"


def shard_names(num_shards: int) -> list[str]:
  return [f"data-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def pack_image_folder(
  source: str,
  out: str,
  split: str = "train",
  num_shards: int = 8,
  context_key: str = "",
  embedding_key: str = "",
) -> str:
  """Packs the images under `source` (its `split` sub-folder where it has one) into out/<split>;
  -> that directory."""
  from array_record.python import array_record_module

  folder = sources.get_source("image_folder", split, source, context_key, embedding_key)
  num_shards = max(1, min(num_shards, len(folder)))
  split_dir = os.path.join(out, split)
  os.makedirs(split_dir, exist_ok=True)
  names = shard_names(num_shards)
  # contiguous shards of about equal size: record i is in shard i * num_shards // N
  bounds = [len(folder) * s // num_shards for s in range(num_shards + 1)]
  labels, arrays = [], {field: [] for field in folder.array_keys}
  for shard, name in enumerate(names):
    writer = array_record_module.ArrayRecordWriter(os.path.join(split_dir, name), "group_size:1")
    for index in range(bounds[shard], bounds[shard + 1]):
      with open(folder.paths[index], "rb") as f:
        writer.write(f.read())
      labels.append(folder.label(index))
      for field, rows in arrays.items():
        sidecar = np.load(folder.array_path(folder.paths[index], field))
        rows.append(sources.AS_ARRAY[field](sidecar))
    writer.close()
    logging.info("Packed %d / %d images into %s.", bounds[shard + 1], len(folder), split_dir)
  np.save(os.path.join(split_dir, "labels.npy"), np.asarray(labels, np.int32))
  manifest = {
    "num_examples": len(folder),
    "classes": sorted(folder.class_index, key=folder.class_index.get),
    "shards": names,
    "context_key": context_key,
    "embedding_key": embedding_key,
  }
  for field, rows in arrays.items():
    shapes = {row.shape for row in rows}
    if len(shapes) > 1:
      raise ValueError(f"The {field}s have different shapes {sorted(shapes)}: pad them to one.")
    np.save(os.path.join(split_dir, f"{field}s.npy"), np.stack(rows))
    manifest[f"{field}_shape"] = list(rows[0].shape)
  with open(os.path.join(split_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return split_dir


FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "The image folder (class sub-folders become labels).")
flags.DEFINE_string("out", None, "Where the packed split goes (OUT/<split>/).")
flags.DEFINE_string("split", "train", "The split: the source's sub-folder of that name, if any.")
flags.DEFINE_integer("num_shards", 8, "ArrayRecord files to write.")
flags.DEFINE_string("context_key", "", "Pack the sidecar contexts <stem>.<context_key>.npy too.")
flags.DEFINE_string(
  "embedding_key", "", "Pack the sidecar embeddings <stem>.<embedding_key>.npy too."
)


def main(argv) -> None:
  del argv
  split_dir = pack_image_folder(
    FLAGS.source, FLAGS.out, FLAGS.split, FLAGS.num_shards, FLAGS.context_key, FLAGS.embedding_key
  )
  print(
    f"Wrote {split_dir}: read it with --config.data.dataset=array_record "
    f"--config.data.data_dir={FLAGS.out}"
  )
