"""unCLIP (Ramesh et al. 2022): the decoder (the Gaussian family given each image's embedding,
data.embedding_key), the diffusion prior (config.family="prior" over vectors) and the two stages
from the command line; oracles: the prior reproduces Gaussian classes' means and covariances, the
guided decoder follows its embeddings better than the unguided one (the shipped digits classifier
as judge)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax import families
from ddpm_jax.data import dataset_tool, sources
from ddpm_jax.families import base, config_validation
from ddpm_jax.models.unet import UNet
from helpers import REPO, tiny_config, with_random_zero_layers


def write_digit_embeddings(directory, width=6, seed=0):
  """Embeddings of the digits aligned with each split ("{split}.npz"): the class mean plus noise."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(10, width)).astype(np.float32)
  for split in ("train", "test"):
    labels = sources.DigitsSource(split).labels
    embedding = means[labels] + 0.1 * rng.normal(size=(len(labels), width)).astype(np.float32)
    np.savez(os.path.join(directory, f"{split}.npz"), embedding=embedding, label=labels)
  return os.path.join(directory, "{split}.npz")


def decoder_config(key, width=6):
  config = tiny_config()
  config.data.embedding_key = key
  config.model.embedding_dim = width
  config.model.embedding_tokens = 2
  config.model.attn_resolutions = (8,)
  config.model.scale_shift_norm = True
  return config


def test_the_embedding_enters_the_time_embedding_and_extra_context_tokens():
  model = UNet(
    ch=32, ch_mult=(1,), attn_resolutions=(8,), out_channels=1, embedding_dim=4,
    embedding_tokens=3, scale_shift_norm=True,
  )  # fmt: skip
  x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.array([3, 7])
  params = with_random_zero_layers(model.init(jax.random.key(1), x, t))
  layers = params["params"]
  # 3 tokens of the attention's context width (4·ch without contexts), beside the time embedding
  assert layers["embedding_tokens"]["kernel"].shape == (4, 3 * 128)
  assert layers["embedding_projection"]["kernel"].shape == (4, 128)
  assert layers["mid_attn"]["cross_kv"]["kernel"].shape[0] == 128
  z = jax.random.normal(jax.random.key(2), (2, 4))
  out = lambda params, z: model.apply(params, x, t, embedding=z)
  np.testing.assert_array_equal(out(params, None), out(params, jnp.zeros((2, 4))))
  # through the tokens alone (the time-embedding path cut) the embedding still changes the output
  cut = jax.tree_util.tree_map(lambda a: a, params)
  cut["params"]["embedding_projection"]["kernel"] = jnp.zeros((4, 128))
  assert float(jnp.abs(out(cut, z) - out(cut, -z)).max()) > 1e-4


def test_label_and_embedding_are_dropped_together_for_classifier_free_guidance():
  key = jax.random.key(3)
  batch = {"label": jnp.arange(64) % 10, "embedding": jnp.ones((64, 5))}
  labels = base.conditioning_labels(key, batch, ml_collections.ConfigDict({"num_classes": 10}), 0.5)
  embedding = base.dropped_condition(key, batch, "embedding", 0.5)
  dropped = np.asarray(embedding[:, 0]) == 0.0
  assert 10 < dropped.sum() < 54
  np.testing.assert_array_equal(dropped, np.asarray(labels) == 10)
  assert base.dropped_condition(key, batch, "context", 0.5) is None


def test_embeddings_from_sidecars_packed_columns_and_split_aligned_files(tmp_path):
  from PIL import Image

  folder = tmp_path / "images" / "train"
  for c in range(2):
    (folder / f"c{c}").mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((8, 8, 3), 60 * c + i, np.uint8)).save(folder / f"c{c}/{i}.png")
      np.save(folder / f"c{c}/{i}.clip.npy", np.full(3, 10 * c + i, np.float32))
  side = sources.get_source("image_folder", "train", str(tmp_path / "images"), embedding_key="clip")
  want = [np.full(3, v, np.float32) for v in (0, 1, 10, 11)]
  for i, w in enumerate(want):
    np.testing.assert_array_equal(side[i]["embedding"], w)
  dataset_tool.pack_image_folder(str(tmp_path / "images"), str(tmp_path / "packed"),
                                 num_shards=2, embedding_key="clip")  # fmt: skip
  manifest = json.loads((tmp_path / "packed" / "train" / "manifest.json").read_text())
  assert manifest["embedding_key"] == "clip" and manifest["embedding_shape"] == [3]
  packed = sources.get_source("array_record", "train", str(tmp_path / "packed"), "", "clip")
  for i, w in enumerate(want):
    np.testing.assert_array_equal(packed[i]["embedding"], w)
  with pytest.raises(ValueError, match="packed with the embeddings 'clip'"):
    sources.get_source("array_record", "train", str(tmp_path / "packed"), "", "other")
  # any dataset: an .npz aligned with the split, "{split}" the split's name
  key = write_digit_embeddings(str(tmp_path))
  digits = sources.get_source("digits", "test", embedding_key=key)
  rows = np.load(str(tmp_path / "test.npz"))["embedding"]
  np.testing.assert_array_equal(digits[5]["embedding"], rows[5])
  assert digits[5]["label"] == sources.DigitsSource("test")[5]["label"]
  np.savez(tmp_path / "short.npz", embedding=rows[:10])
  with pytest.raises(ValueError, match="has 10 rows, but the split has 297"):
    sources.get_source("digits", "test", embedding_key=str(tmp_path / "short.npz"))
  with pytest.raises(ValueError, match="data.dataset='digits' stores no arrays"):
    sources.get_source("digits", "test", embedding_key="clip")


def test_a_decoder_config_checks_its_embeddings(tmp_path):
  key = write_digit_embeddings(str(tmp_path))
  config = decoder_config(key)
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.conditions == ("embedding",)
  config.model.embedding_dim = None
  with pytest.raises(ValueError, match="data.embedding_key=.* and model.embedding_dim=None go"):
    config_validation.validate_config(config)
  plain = tiny_config()
  plain.sampling.prior_workdir = str(tmp_path)
  with pytest.raises(ValueError, match="sampling.prior_workdir gives an embedding-conditioned"):
    config_validation.validate_config(plain)
  for family_name in ("edm", "representation"):
    other = tiny_config(family=family_name)
    other.model.embedding_dim = 4
    with pytest.raises(ValueError, match="model.embedding_dim"):
      config_validation.validate_config(other)
  from ddpm_jax.data import loader

  wrong = decoder_config(key, width=5)
  with pytest.raises(ValueError, match="gives embeddings of width 6, but model.embedding_dim=5"):
    next(loader.batches(wrong.data, split="train", global_batch_size=8, seed=0, embedding_dim=5))


def test_the_decoder_trains_on_dropped_embeddings_and_guides_towards_them(tmp_path):
  key = write_digit_embeddings(str(tmp_path))
  config = decoder_config(key)
  config.sampling.guidance_scale = 2.0
  family = families.get_family(config)
  params = with_random_zero_layers(family.init_params(jax.random.key(0)))
  batch = {
    "image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1),
    "label": jnp.zeros(8, jnp.int32),
    "embedding": jax.random.normal(jax.random.key(2), (8, 6)),
  }
  draws = family.draw(families.step_keys(jax.random.key(3)), batch, None)
  kept = np.asarray(jnp.all(draws["conditions"]["embedding"] == batch["embedding"], axis=1))
  assert kept.all() or not np.asarray(draws["conditions"]["embedding"])[~kept].any()
  # the guided network is (1 + w) ε(x, z) - w ε(x, ∅), ∅ the zero embedding
  x = jax.random.normal(jax.random.key(4), (8, 8, 8, 1))
  t = jnp.full((8,), 30)
  eps = lambda z: family.model.apply(params, x, t, embedding=z)
  want = 3.0 * eps(batch["embedding"]) - 2.0 * eps(jnp.zeros((8, 6)))
  assert float(jnp.abs(want - eps(batch["embedding"])).max()) > 1e-3
  from ddpm_jax.families import gaussian

  model_fn = gaussian.free_guidance(
    lambda y, c: lambda x_t, t: family.model.apply(params, x_t, t, y, **c),
    families.Cond(embedding=batch["embedding"]),
    (gaussian.cross_attention(config), gaussian.image_embedding(config)),
    config.sampling,
    2.0,
    1,
  )
  np.testing.assert_allclose(model_fn(x, t), want, rtol=1e-5, atol=1e-5)


def gaussian_classes():
  """Three classes in R^4 with non-diagonal covariances."""
  means = np.array([[1.5, 0, 0, 0], [0, 1.5, 0, -1], [0, 0, -1.5, 1]], np.float32)
  a = np.array([[0.5, 0, 0, 0], [0.3, 0.3, 0, 0], [0, 0.2, 0.4, 0], [0.1, 0, 0.2, 0.3]])
  covs = [a @ a.T, 0.5 * a @ a.T + 0.05 * np.eye(4), np.diag([0.1, 0.2, 0.3, 0.1]) + 0.05]
  return means, np.asarray(covs, np.float32)


def test_the_prior_reads_its_dimensions_and_classes_from_the_file(tmp_path):
  path = tmp_path / "pairs.npz"
  np.savez(path, embedding=np.ones((40, 7)), label=np.arange(40) % 3,
           caption_embedding=np.ones((40, 5, 2)))  # fmt: skip
  sys.path.insert(0, REPO)
  from configs import prior_default

  config = prior_default.get_config()
  config.data.path = str(path)
  families.completed(config)
  assert (config.prior.embedding_dim, config.prior.caption_dim, config.model.num_classes) == (
    7, 2, 3
  )  # fmt: skip
  config_validation.validate_config(config)
  family = families.get_family(config)
  assert family.samples == "embeddings" and family.conditions == ("label", "context")
  held_out = sources.open_source(config.data, config.data.eval_split)
  assert len(held_out) == 2 and len(sources.open_source(config.data, "train[:95%]")) == 38
  assert held_out[0]["caption_embedding"].shape == (5, 2)
  config.data.dataset = "digits"
  with pytest.raises(ValueError, match="config.family='prior' learns embeddings"):
    config_validation.validate_config(config)
  # and the image families refuse vectors, the other datasets a data.path they would not read
  for family_name in ("gaussian", "classifier", "edm"):
    images = tiny_config(family=family_name)
    images.data.dataset = "embeddings"
    with pytest.raises(ValueError, match="data.dataset='embeddings' holds vectors"):
      config_validation.validate_config(images)
  digits = tiny_config()
  digits.data.path = str(path)
  with pytest.raises(ValueError, match="data.dataset='digits' does not read it"):
    config_validation.validate_config(digits)


@pytest.mark.extended
def test_the_prior_reproduces_each_classs_mean_and_covariance(tmp_path):
  """Trained 3000 steps on 4,000 draws of three Gaussian classes, 1,000 ancestral samples per class
  (64 steps, unguided): the means within 0.15 and the covariances within 0.06 entrywise (the
  Monte-Carlo standard errors of 1,000 samples: about 0.02 and 0.01; the classes' means are 1.5 and
  more apart, their variances 0.1 to 0.35)."""
  rng = np.random.default_rng(0)
  means, covs = gaussian_classes()
  labels = rng.integers(0, 3, 4000)
  chol = np.linalg.cholesky(covs)
  embedding = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.normal(size=(4000, 4)))
  np.savez(tmp_path / "pairs.npz", embedding=embedding.astype(np.float32), label=labels)
  from configs import prior_default
  from ddpm_jax.jobs import sample, train

  config = prior_default.get_config()
  config.data.path = str(tmp_path / "pairs.npz")
  config.prior.width, config.prior.depth = 64, 2
  config.optim.warmup_steps = 50
  config.training.log_every_steps = 1000
  config.training.checkpoint_every_steps = 3000
  config.sampling.guidance_scale = 0.0
  config.sampling.num_samples = config.sampling.batch_size = 3000
  config.sampling.labels = (0, 1, 2)
  train.train_and_evaluate(config, str(tmp_path / "prior"))
  samples = np.load(sample.sample(config, str(tmp_path / "prior")))
  assert samples["embeddings"].shape == (3000, 4)
  for k in range(3):
    drawn = samples["embeddings"][samples["labels"] == k]
    assert len(drawn) == 1000
    np.testing.assert_allclose(drawn.mean(0), means[k], atol=0.15)
    np.testing.assert_allclose(np.cov(drawn.T), covs[k], atol=0.06)
  # --mode=eval: the samples' Fréchet distance to the held-out 5 % (200 draws) is close to that of
  # the train split's own draws (the floor a perfect model reaches with these finite sets)
  from ddpm_jax.jobs import evaluate

  results = evaluate.evaluate(config, str(tmp_path / "prior"))
  floor = results["embedding_fd_train_split"]
  assert results["embedding_fd"] < 1.5 * floor + 0.05, results


def run_main(*args, cwd):
  result = subprocess.run(
    [sys.executable, "-m", "ddpm_jax.main", *args], cwd=cwd, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.extended
def test_guidance_follows_the_embedding_and_the_two_stages_run_from_the_command_line(tmp_path):
  """The decoder on the digits given the shipped classifier's features of each image (a stand-in
  for CLIP): its decodes of held-out embeddings are classified as the embedding's image more often
  with guidance than without; label -> prior -> embedding -> decoder -> image, variations and
  interpolation run from the command line."""
  from ddpm_jax.evaluation import feature_net

  for split in ("train", "test"):
    feature_net.main(["--embed", split, "--out", str(tmp_path / f"{split}.npz")])
  decoder = [
    f"--config={REPO}/configs/unclip_decoder_default.py",
    f"--workdir={tmp_path / 'decoder'}",
    f"--config.data.embedding_key={tmp_path}/{{split}}.npz",
    "--config.model.embedding_dim=64",
    "--config.training.num_train_steps=800",
    "--config.training.batch_size=32",  # half the default's: guidance is learned all the same
    "--config.training.checkpoint_every_steps=800",
    "--config.training.sample_every_steps=800",
    "--config.sampling.sampler=ddim",
    "--config.sampling.num_steps=20",
    "--config.sampling.num_samples=297",
    "--config.sampling.batch_size=297",
  ]
  prior = [
    f"--config={REPO}/configs/prior_default.py",
    f"--workdir={tmp_path / 'prior'}",
    f"--config.data.path={tmp_path}/train.npz",
    "--config.training.num_train_steps=300",
    "--config.training.batch_size=64",
    "--config.training.checkpoint_every_steps=300",
    "--config.prior.width=64",
    "--config.prior.depth=2",
  ]
  run_main(*decoder, cwd=REPO)
  run_main(*prior, cwd=REPO)
  params, _ = feature_net.load(feature_net.default_path("digits", 8))
  from ddpm_jax import pixels

  def accuracy(samples):
    predicted = feature_net.apply(params, pixels.from_uint8(samples["images"]))[1].argmax(-1)
    return float(np.mean(predicted == samples["labels"]))

  found = {}
  for scale in (0.0, 3.0):
    run_main(*decoder, "--mode=sample", f"--config.sampling.guidance_scale={scale}", cwd=REPO)
    found[scale] = accuracy(np.load(tmp_path / "decoder" / "samples" / "samples_800.npz"))
  # 297 held-out embeddings: a standard error of about 0.03 on each accuracy (measured: 0.18
  # without guidance, 0.44 with)
  assert found[3.0] > found[0.0] + 0.1, found
  run_main(*prior, "--mode=sample", "--config.sampling.num_samples=100", cwd=REPO)
  embeddings = np.load(tmp_path / "prior" / "samples" / "samples_300.npz")
  assert embeddings["embeddings"].shape == (100, 64) and set(embeddings["labels"]) == set(range(10))
  two_stage_flags = [
    f"--config.sampling.prior_workdir={tmp_path / 'prior'}",
    "--config.sampling.num_samples=100",
    "--config.sampling.batch_size=100",
  ]
  run_main(*decoder, "--mode=sample", *two_stage_flags, cwd=REPO)
  two_stage = np.load(tmp_path / "decoder" / "samples" / "samples_800.npz")
  assert two_stage["images"].shape == (100, 8, 8, 1) and two_stage["embeddings"].shape == (100, 64)
  np.testing.assert_array_equal(two_stage["labels"], embeddings["labels"])
  # the prior's samples, drawn again from its seed: sample i depends on key i alone
  np.testing.assert_allclose(two_stage["embeddings"], embeddings["embeddings"], atol=1e-5)
  run_main(*decoder, "--mode=variations", "--config.variations.num_variations=3", cwd=REPO)
  variations = np.load(tmp_path / "decoder" / "edits" / "variations_800.npz")
  assert variations["images"].shape == (12, 8, 8, 1) and variations["inputs"].shape[0] == 4
  assert len({bytes(image) for image in variations["images"]}) == 12  # different noises
  run_main(*decoder, "--mode=interpolate", cwd=REPO)
  frames = np.load(tmp_path / "decoder" / "edits" / "interpolate_800.npz")
  held_out = np.load(tmp_path / "test.npz")["embedding"][:2]
  np.testing.assert_allclose(frames["codes"], held_out, rtol=1e-6)
  assert frames["frames"].shape == (8, 8, 8, 1)
  # and from the pipeline: the prior's embeddings for the labels, decoded
  import ddpm_jax

  decoder_pipe, prior_pipe = (
    ddpm_jax.load(str(tmp_path / "decoder")),
    ddpm_jax.load(str(tmp_path / "prior")),
  )
  labels = np.arange(10)
  drawn = prior_pipe.sample(10, labels=labels, guidance_scale=1.0, seed=3)
  assert drawn.shape == (10, 64) and drawn.dtype == np.float32
  images = decoder_pipe.sample(
    10, prior=prior_pipe, labels=labels, prior_guidance_scale=1.0, seed=3
  )
  np.testing.assert_array_equal(images, decoder_pipe.sample(10, embeddings=drawn, seed=3))
  assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
