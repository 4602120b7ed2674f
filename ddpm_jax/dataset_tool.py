"""Writes a dataset once into ArrayRecord shards (`ddpm_jax.data.dataset_tool`):

  python -m ddpm_jax.dataset_tool --source=DIR --out=DIR [--split=train] [--num_shards=8]
      [--context_key=KEY] [--embedding_key=KEY]
packs an image folder (class sub-folders become labels), read with data.dataset="array_record";

  python -m ddpm_jax.dataset_tool --encode_with=AUTOENCODER_WORKDIR --out=DIR [--dataset=digits]
      [--source=DATA_DIR] [--split=train] [--batch_size=64] [--latent_dtype=float32]
encodes any dataset once by that autoencoder (the posterior of each image and of its mirror image,
`jobs.latent.encode_dataset`), read with data.dataset="latents" beside
latent.autoencoder_workdir.
"""

from absl import app, flags

from ddpm_jax.data.dataset_tool import pack_image_folder

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "The image folder, or --dataset's data_dir.")
flags.DEFINE_string("out", None, "Where the split goes (OUT/<split>/).")
flags.DEFINE_string("split", "train", "The split: the source's sub-folder of that name, if any.")
flags.DEFINE_integer("num_shards", 8, "ArrayRecord files to write.")
flags.DEFINE_string("context_key", "", "Pack the contexts too (an image folder's sidecars).")
flags.DEFINE_string("embedding_key", "", "Pack the embeddings too (an image folder's sidecars).")
flags.DEFINE_string(
  "encode_with", None, "An autoencoder's workdir: write its latents of the dataset, not images."
)
flags.DEFINE_string(
  "dataset", "image_folder", "With --encode_with: the data.dataset to encode (digits, cifar10, …)."
)
flags.DEFINE_integer("batch_size", 64, "With --encode_with: images encoded per call.")
flags.DEFINE_integer(
  "image_size", 0, "With --encode_with: the images' size (0: the autoencoder's)."
)
flags.DEFINE_enum("resize", "bilinear", ["bilinear", "adm"], "With --encode_with: data.resize.")
flags.DEFINE_enum(
  "latent_dtype", "float32", ["float32", "float16"], "With --encode_with: the stored posteriors'."
)

ENCODING_FLAGS = ("dataset", "batch_size", "image_size", "resize", "latent_dtype")


def main(argv) -> None:
  del argv
  if FLAGS.encode_with:
    from ddpm_jax.jobs.latent import encode_dataset

    split_dir = encode_dataset(
      FLAGS.encode_with,
      FLAGS.out,
      dataset=FLAGS.dataset,
      data_dir=FLAGS.source,
      split=FLAGS.split,
      num_shards=FLAGS.num_shards,
      batch_size=FLAGS.batch_size,
      image_size=FLAGS.image_size or None,
      resize=FLAGS.resize,
      context_key=FLAGS.context_key,
      embedding_key=FLAGS.embedding_key,
      latent_dtype=FLAGS.latent_dtype,
    )
    read_as = "latents --config.latent.autoencoder_workdir=" + FLAGS.encode_with
  else:
    unread = [f"--{name}" for name in ENCODING_FLAGS if FLAGS[name].present]
    if unread:
      raise app.UsageError(f"{', '.join(unread)}: read with --encode_with only.")
    if not FLAGS.source:
      raise app.UsageError("--source: the image folder to pack.")
    split_dir = pack_image_folder(
      FLAGS.source,
      FLAGS.out,
      FLAGS.split,
      FLAGS.num_shards,
      FLAGS.context_key,
      FLAGS.embedding_key,
    )
    read_as = "array_record"
  print(
    f"Wrote {split_dir}: read it with --config.data.dataset={read_as} "
    f"--config.data.data_dir={FLAGS.out}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
