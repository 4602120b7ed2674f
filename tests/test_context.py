"""Context conditioning (cross-attention to a per-example context, classifier-free guidance with
the zero context as ∅), trained end to end on a synthetic image folder whose sidecar contexts
decide what each image shows."""

import numpy as np
from PIL import Image
import pytest

from configs import default
from ddpm_jax import families, train
from ddpm_jax.data import loader, order, sources
from ddpm_jax.jobs import sample as sample_lib
from ddpm_jax.runtime import parallel
from helpers import tiny_config

CONTEXT_DIM = 8


def contrast(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 8, 8, 1] -> mean brightness of the top half minus the bottom half, in [-1, 1]."""
  x = images[..., 0].astype(np.float32) / 255.0
  return x[:, :4].mean(axis=(1, 2)) - x[:, 4:].mean(axis=(1, 2))


def write_folder(root, num_images: int = 128) -> np.ndarray:
  """Images bright in the top or in the bottom half; the context of each is the embedding of its
  half (one of two random vectors) plus noise. -> the two embeddings [2, CONTEXT_DIM]."""
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(2, CONTEXT_DIM)).astype(np.float32)
  root.mkdir()
  for i in range(num_images):
    half = i % 2  # 0: top bright, 1: bottom bright
    image = rng.integers(0, 40, (8, 8), dtype=np.uint8)
    image[4 * half : 4 * half + 4] += 200
    Image.fromarray(image, "L").save(root / f"{i:03d}.png")
    context = embeddings[half] + 0.1 * rng.normal(size=CONTEXT_DIM).astype(np.float32)
    np.save(root / f"{i:03d}.ctx.npy", context[None])  # [L = 1, D]
  return embeddings


def context_config(data_dir, num_train_steps: int = 200):
  config = tiny_config(num_train_steps=num_train_steps, batch_size=32)
  config.data.dataset, config.data.data_dir, config.data.context_key = (
    "image_folder",
    data_dir,
    "ctx",
  )
  config.model.context_dim = CONTEXT_DIM
  config.model.ch_mult, config.model.attn_resolutions = (1, 2), (4,)  # cross-attention at 4×4
  config.optim.lr, config.optim.ema_decay = 1e-3, 0.9
  config.training.log_every_steps = config.training.checkpoint_every_steps = num_train_steps
  config.training.label_dropout = 0.2
  config.sampling.sampler, config.sampling.num_steps, config.sampling.batch_size = "ddim", 10, 32
  return config


def test_image_folder_contexts_reach_the_batches(tmp_path):
  write_folder(tmp_path / "data", num_images=8)
  config = context_config(str(tmp_path / "data"))
  batch = next(
    loader.batches(config.data, split="train", global_batch_size=4, seed=0, context_dim=CONTEXT_DIM)
  )
  assert batch["context"].shape == (4, 1, CONTEXT_DIM) and batch["context"].dtype == np.float32
  source = sources.open_source(config.data, "train")
  indices = order.stream_indices(len(source), 0, np.arange(4))
  for row, index in enumerate(indices):  # each image's own sidecar, in the stream's order
    np.testing.assert_array_equal(batch["context"][row], source[int(index)]["context"])
  with pytest.raises(ValueError, match="width 8, but model.context_dim=4"):
    loader.batches(config.data, split="train", global_batch_size=4, seed=0, context_dim=4)


def test_a_missing_context_or_a_context_without_model_is_refused(tmp_path):
  from ddpm_jax.families.config_validation import validate_config

  write_folder(tmp_path / "data", num_images=4)
  (tmp_path / "data" / "002.ctx.npy").unlink()
  config = context_config(str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match="1 of 4 images have no context.*002.ctx.npy"):
    sources.open_source(config.data, "train")
  config.model.context_dim = None
  with pytest.raises(ValueError, match="context_key='ctx' and model.context_dim=None go together"):
    validate_config(config)
  default.with_family(config, "ardm")
  config.model.context_dim = CONTEXT_DIM
  with pytest.raises(ValueError, match="context_dim .* trains with the families gaussian, edm"):
    validate_config(config)


@pytest.mark.extended
def test_guided_samples_follow_their_context_better_than_unguided(tmp_path):
  embeddings = write_folder(tmp_path / "data")
  config = context_config(str(tmp_path / "data"))
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  mesh = parallel.make_mesh()
  halves = np.arange(32) % 2
  # the sign the contrast should have: + for "top bright" (0), - for "bottom bright" (1)
  wanted = 1.0 - 2.0 * halves
  contexts = embeddings[halves][:, None]
  agreement = {}
  for name, scale, given in (
    ("unconditional", 0.0, np.zeros_like(contexts)),  # ∅ for every sample
    ("conditional", 0.0, contexts),
    ("guided", 3.0, contexts),
  ):
    config.sampling.guidance_scale = scale
    images, _ = sample_lib.generate(
      config, state.ema_params, 32, mesh, cond=families.Cond(context=given)
    )
    agreement[name] = float(np.mean(wanted * contrast(images)))
  # the unconditional model draws either half: no agreement with a context it does not see
  assert abs(agreement["unconditional"]) < 0.3, agreement
  assert agreement["conditional"] > agreement["unconditional"] + 0.2, agreement
  assert agreement["guided"] > agreement["conditional"], agreement
  assert agreement["guided"] > 0.5, agreement


def test_sampling_contexts_come_from_a_file_or_the_eval_split(tmp_path):
  write_folder(tmp_path / "data", num_images=4)
  config = context_config(str(tmp_path / "data"))
  source = sources.open_source(config.data, config.data.eval_split)
  from_split = sample_lib.generation_contexts(config, 6)  # the split's 4 contexts, in turn
  assert from_split.shape == (6, 1, CONTEXT_DIM)
  for i in range(6):
    np.testing.assert_array_equal(from_split[i], source[i % 4]["context"])
  vectors = np.random.default_rng(1).normal(size=(3, CONTEXT_DIM)).astype(np.float32)
  np.save(tmp_path / "contexts.npy", vectors)  # one vector per sample: L = 1
  config.sampling.context_file = str(tmp_path / "contexts.npy")
  np.testing.assert_array_equal(sample_lib.generation_contexts(config, 3)[:, 0], vectors)
  config.model.context_dim = 4
  with pytest.raises(ValueError, match=r"\[N, L, model.context_dim=4\]; got \(3, 1, 8\)"):
    sample_lib.generation_contexts(config, 3)


def test_a_tfds_context_key_must_be_a_feature_of_the_dataset():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="'caption' is not a feature of this dataset.*image"):
      sources.get_source("cifar10", "train", context_key="caption")
