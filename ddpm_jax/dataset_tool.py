"""`python -m ddpm_jax.dataset_tool --source=DIR --out=DIR`: packs an image folder into ArrayRecord
shards (`ddpm_jax.data.dataset_tool`)."""

from absl import app, flags

from ddpm_jax.data.dataset_tool import main

if __name__ == "__main__":
  flags.mark_flags_as_required(["source", "out"])
  app.run(main)
